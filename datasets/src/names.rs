//! Names and themes for generated artists and tracks. Every taste group has a theme: a
//! vocabulary its track titles (and, later, lyrics) draw from, so content carries group signal.

use crate::rng::Rng;

/// Words of each theme. A taste group uses theme `group % THEMES.len()`.
pub const THEMES: &[(&str, &[&str])] = &[
    (
        "ocean",
        &[
            "wave",
            "tide",
            "salt",
            "harbor",
            "shore",
            "sailor",
            "anchor",
            "deep",
            "current",
            "lighthouse",
            "coral",
            "storm",
        ],
    ),
    (
        "city",
        &[
            "neon", "subway", "street", "tower", "traffic", "siren", "concrete", "rooftop", "taxi",
            "skyline", "alley", "crowd",
        ],
    ),
    (
        "desert",
        &[
            "sand", "mirage", "cactus", "dune", "thirst", "sun", "canyon", "dust", "nomad",
            "oasis", "scorpion", "heat",
        ],
    ),
    (
        "forest",
        &[
            "pine", "moss", "fern", "owl", "timber", "root", "clearing", "deer", "bark",
            "mushroom", "canopy", "trail",
        ],
    ),
    (
        "space",
        &[
            "orbit",
            "comet",
            "galaxy",
            "rocket",
            "nebula",
            "gravity",
            "astronaut",
            "planet",
            "void",
            "satellite",
            "eclipse",
            "star",
        ],
    ),
    (
        "winter",
        &[
            "snow",
            "frost",
            "ice",
            "blizzard",
            "fireplace",
            "sled",
            "cold",
            "december",
            "glacier",
            "scarf",
            "breath",
            "pale",
        ],
    ),
    (
        "summer",
        &[
            "beach", "sunset", "lemonade", "festival", "heatwave", "barefoot", "july", "pool",
            "tan", "breeze", "holiday", "golden",
        ],
    ),
    (
        "heartbreak",
        &[
            "tears", "goodbye", "broken", "letter", "alone", "memory", "ring", "empty", "regret",
            "rain", "silence", "promise",
        ],
    ),
    (
        "party",
        &[
            "dance", "bass", "club", "midnight", "drink", "lights", "dj", "floor", "crazy",
            "weekend", "loud", "shake",
        ],
    ),
    (
        "rebellion",
        &[
            "riot",
            "fire",
            "chains",
            "fist",
            "anthem",
            "barricade",
            "freedom",
            "scream",
            "war",
            "flag",
            "revolt",
            "noise",
        ],
    ),
    (
        "faith",
        &[
            "prayer", "grace", "angel", "heaven", "choir", "altar", "soul", "light", "mercy",
            "hymn", "spirit", "glory",
        ],
    ),
    (
        "road",
        &[
            "highway", "engine", "mile", "diesel", "motel", "wheel", "freeway", "horizon", "truck",
            "gasoline", "border", "drive",
        ],
    ),
    (
        "night",
        &[
            "moon", "shadow", "dream", "owl", "dark", "candle", "whisper", "insomnia", "velvet",
            "lantern", "ghost", "hush",
        ],
    ),
    (
        "machine",
        &[
            "circuit", "wire", "robot", "signal", "binary", "chrome", "laser", "static", "pulse",
            "motor", "code", "voltage",
        ],
    ),
    (
        "home",
        &[
            "kitchen",
            "mother",
            "porch",
            "garden",
            "family",
            "table",
            "window",
            "village",
            "bread",
            "childhood",
            "doorstep",
            "warm",
        ],
    ),
    (
        "money",
        &[
            "gold", "cash", "diamond", "bank", "hustle", "rich", "deal", "chain", "empire",
            "dollar", "vault", "boss",
        ],
    ),
    (
        "mountain",
        &[
            "peak", "summit", "stone", "eagle", "valley", "cliff", "echo", "climb", "river",
            "wolf", "ridge", "thunder",
        ],
    ),
    (
        "love",
        &[
            "kiss", "honey", "darling", "heart", "forever", "embrace", "sweet", "lover", "rose",
            "tender", "together", "baby",
        ],
    ),
    (
        "time",
        &[
            "clock",
            "yesterday",
            "hour",
            "forever",
            "season",
            "calendar",
            "minute",
            "future",
            "past",
            "sand",
            "tick",
            "age",
        ],
    ),
    (
        "war",
        &[
            "soldier", "battle", "trench", "cannon", "march", "medal", "enemy", "bullet",
            "general", "ruins", "front", "siege",
        ],
    ),
    (
        "carnival",
        &[
            "circus", "clown", "carousel", "ticket", "juggler", "candy", "ferris", "tent", "magic",
            "parade", "mask", "drum",
        ],
    ),
    (
        "garden",
        &[
            "bloom",
            "petal",
            "bee",
            "seed",
            "rain",
            "tulip",
            "vine",
            "orchard",
            "sprout",
            "harvest",
            "butterfly",
            "meadow",
        ],
    ),
    (
        "ice",
        &[
            "crystal", "mirror", "glass", "shard", "polar", "silver", "freeze", "clear", "thin",
            "sharp", "north", "white",
        ],
    ),
    (
        "fire",
        &[
            "flame", "ember", "smoke", "ash", "spark", "blaze", "burn", "furnace", "red", "torch",
            "inferno", "coal",
        ],
    ),
];

const GENERAL: &[&str] = &[
    "the", "my", "your", "little", "last", "first", "blue", "new", "old", "wild", "lost", "young",
    "secret", "slow", "electric", "sweet", "cold", "high", "silent", "holy", "easy", "lonely",
    "strange", "bright", "hollow", "golden",
];

const ONSETS: &[&str] = &[
    "b", "br", "c", "ch", "d", "dr", "f", "g", "gr", "h", "j", "k", "l", "m", "n", "p", "pr", "r",
    "s", "sh", "st", "t", "tr", "v", "w", "z",
];
const VOWELS: &[&str] = &["a", "e", "i", "o", "u", "ai", "ou", "ea", "y"];
const CODAS: &[&str] = &["", "", "n", "r", "s", "x", "th", "ck", "l", "m"];
/// Words that give some artist names non-ASCII letters, as in the real logs.
const UNICODE_WORDS: &[&str] = &[
    "Björk",
    "Sigur",
    "Мумий",
    "Тролль",
    "Røyksopp",
    "Mötley",
    "Céline",
    "Niño",
    "東京",
    "事変",
    "Ólafur",
    "Zoë",
    "Ærø",
    "Crüe",
];
const SUFFIXES: &[&str] = &[
    "",
    "",
    "",
    " Band",
    " Orchestra",
    " Collective",
    " Trio",
    " & The Wolves",
    " Sound System",
    " Project",
];

pub fn capitalise(word: &str) -> String {
    let mut chars = word.chars();
    match chars.next() {
        Some(c) => c.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

fn syllable_word(rng: &mut Rng) -> String {
    let syllables = 1 + rng.below(3);
    let mut w = String::new();
    for _ in 0..syllables {
        w.push_str(rng.pick(ONSETS));
        w.push_str(rng.pick(VOWELS));
    }
    w.push_str(rng.pick(CODAS));
    capitalise(&w)
}

/// An artist name: invented words, sometimes a real-world non-ASCII word, sometimes a suffix.
pub fn artist_name(rng: &mut Rng) -> String {
    let words = 1 + rng.below(2);
    let mut name: Vec<String> = (0..words).map(|_| syllable_word(rng)).collect();
    if rng.chance(0.12) {
        name.push(rng.pick(UNICODE_WORDS).to_string());
    }
    let mut name = name.join(" ");
    name.push_str(rng.pick(SUFFIXES));
    name
}

/// A track title drawn mostly from `theme`'s words.
pub fn track_title(rng: &mut Rng, theme: usize) -> String {
    let words = THEMES[theme % THEMES.len()].1;
    let n = 1 + rng.below(3);
    let mut parts = Vec::with_capacity(n as usize + 1);
    if rng.chance(0.4) {
        parts.push(capitalise(rng.pick(GENERAL)));
    }
    for _ in 0..n {
        parts.push(capitalise(rng.pick(words)));
    }
    let mut title = parts.join(" ");
    match rng.below(12) {
        0 => title.push_str(" (Live)"),
        1 => title.push_str(" (Remix)"),
        2 => title.push_str(", Pt. 2"),
        3 => title.push_str(" - Acoustic"),
        _ => {}
    }
    title
}

/// A version-4-shaped UUID from the generator's randomness (generated MusicBrainz ids).
pub fn mbid(rng: &mut Rng) -> String {
    let a = rng.next_u64();
    let b = rng.next_u64();
    let v = ((a as u128) << 64) | b as u128;
    let v = (v & !(0xF000u128 << 64)) | (0x4000u128 << 64); // version 4
    let v = (v & !(0xC000_0000_0000_0000u128)) | 0x8000_0000_0000_0000u128; // RFC variant
    let h = format!("{v:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_clean_fields() {
        let mut rng = Rng::new(3, 3);
        for _ in 0..2000 {
            let theme = rng.below(40) as usize;
            for s in [artist_name(&mut rng), track_title(&mut rng, theme)] {
                assert!(!s.trim().is_empty());
                assert!(!s.contains(['\t', '\n', '\r']), "{s:?}");
            }
        }
        let id = mbid(&mut rng);
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
    }
}
