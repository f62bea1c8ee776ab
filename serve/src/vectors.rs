//! User vectors: the session vector (long-term ALS factor blended with the short-term one) and
//! the short-term update on a play.

/// Share of the long-term vector in the session vector.
pub const LONG_WEIGHT: f32 = 0.7;
/// Share of the old short-term vector kept on a play (the API default).
pub const DEFAULT_DECAY: f32 = 0.7;

/// `weight·long + (1 − weight)·short` when both exist with the same length; the long one when
/// lengths differ; whichever exists; `None` for a cold user.
pub fn session_vector(
    long: Option<&[f32]>,
    short: Option<&[f32]>,
    weight: f32,
) -> Option<Vec<f32>> {
    match (long, short) {
        (Some(l), Some(s)) if l.len() == s.len() => Some(
            l.iter()
                .zip(s)
                .map(|(a, b)| weight * a + (1.0 - weight) * b)
                .collect(),
        ),
        (Some(l), _) => Some(l.to_vec()),
        (None, Some(s)) => Some(s.to_vec()),
        (None, None) => None,
    }
}

/// The short-term vector after playing a song with ALS factor `song`:
/// `decay·old + (1 − decay)·song`, or the song's factor on the first play (or when the old
/// vector has another length, e.g. from an older model).
pub fn record_play(old: Option<&[f32]>, song: &[f32], decay: f32) -> Vec<f32> {
    match old {
        Some(old) if old.len() == song.len() => old
            .iter()
            .zip(song)
            .map(|(o, s)| decay * o + (1.0 - decay) * s)
            .collect(),
        _ => song.to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_vector_blends_or_falls_back() {
        let long = [1.0, 0.0];
        let short = [0.0, 1.0];
        let v = session_vector(Some(&long), Some(&short), LONG_WEIGHT).unwrap();
        assert!((v[0] - 0.7).abs() < 1e-6 && (v[1] - 0.3).abs() < 1e-6);
        assert_eq!(
            session_vector(Some(&long), Some(&[1.0]), 0.7).unwrap(),
            long
        );
        assert_eq!(session_vector(None, Some(&short), 0.7).unwrap(), short);
        assert!(session_vector(None, None, 0.7).is_none());
    }

    #[test]
    fn record_play_follows_the_formula() {
        let first = record_play(None, &[2.0, 4.0], DEFAULT_DECAY);
        assert_eq!(first, [2.0, 4.0]);
        let second = record_play(Some(&first), &[0.0, 10.0], DEFAULT_DECAY);
        assert!((second[0] - 1.4).abs() < 1e-6 && (second[1] - 5.8).abs() < 1e-6);
    }
}
