// The player's logic, free of the DOM (unit-tested by player.test.js with `node --test`).
//
// The data has no audio: playback is a clock over the song's duration. What a listener did is
// logged as in the seed, with its bugs fixed: nothing under 2 s, `complete` when the song ended
// or at least 90 % was heard, `skip` under 50 %, `listen` otherwise; and after 30 s of listening
// the server is told once per song (the short-term taste update).

export const MIN_LOGGED_S = 2;
export const RECORD_AFTER_S = 30;
export const REFILL_AT = 7;
/** The length played for a song whose length nobody knows (Last.fm logs carry none). */
export const ASSUMED_LENGTH_S = 210;

/** How long the clock runs for `song`. */
export function lengthOf(song) {
  return song.duration_s > 0 ? song.duration_s : ASSUMED_LENGTH_S;
}

/** The action for a song left after `listenedS` of `totalS` seconds, or null (not logged). */
export function listenAction(listenedS, totalS, ended) {
  if (listenedS < MIN_LOGGED_S) return null;
  if (ended) return "complete";
  if (!(totalS > 0)) return "listen";
  const ratio = listenedS / totalS;
  if (ratio >= 0.9) return "complete";
  if (ratio < 0.5) return "skip";
  return "listen";
}

/**
 * The event body for POST /api/v1/events, or null when nothing is to be logged. A song of
 * unknown length is judged against the length the clock assumed, and logged with a total of 0
 * (unknown), as the event contract says.
 */
export function listenEvent(userId, song, listenedS, ended, nowMs) {
  const known = song.duration_s > 0 ? song.duration_s : 0;
  const action = listenAction(listenedS, lengthOf(song), ended);
  if (!action) return null;
  return {
    user_id: userId,
    track_id: song.id,
    artist_id: song.artist_id,
    action,
    duration_s: Math.floor(known > 0 ? Math.min(listenedS, known) : listenedS),
    total_duration_s: Math.floor(known),
    timestamp_ms: nowMs,
    source: "web",
  };
}

/**
 * The playback clock of one song: position (where in the song) and listened (seconds really
 * played; seeking does not count). Time comes from the caller (`nowMs`), scaled by `speed`.
 */
export class SongClock {
  constructor(durationS, speed = 1) {
    this.duration = durationS > 0 ? durationS : 0;
    this.speed = speed;
    this.position = 0;
    this.listened = 0;
    this.playingSince = null;
    this.recorded = false;
    this.ended = false;
  }

  get playing() {
    return this.playingSince !== null;
  }

  play(nowMs) {
    if (!this.playing && !this.ended) this.playingSince = nowMs;
  }

  pause(nowMs) {
    this.advance(nowMs);
    this.playingSince = null;
  }

  /** Moves to `positionS` (clamped to the song) without counting it as listened. */
  seek(positionS, nowMs) {
    this.advance(nowMs);
    const end = this.duration || Infinity;
    this.position = Math.max(0, Math.min(positionS, end));
    this.ended = this.duration > 0 && this.position >= this.duration;
    if (this.ended) this.playingSince = null;
  }

  advance(nowMs) {
    if (!this.playing) return;
    let step = ((nowMs - this.playingSince) / 1000) * this.speed;
    this.playingSince = nowMs;
    if (this.duration > 0 && this.position + step >= this.duration) {
      step = Math.max(0, this.duration - this.position);
      this.ended = true;
      this.playingSince = null;
    }
    this.position += step;
    this.listened += step;
  }

  /** Advances to `nowMs`; says whether the 30-second rule fires now (once) and whether the song ended. */
  tick(nowMs) {
    this.advance(nowMs);
    const record = !this.recorded && this.listened >= RECORD_AFTER_S;
    if (record) this.recorded = true;
    return { record, ended: this.ended };
  }
}

/** The play queue: songs in order, the current index, fed by next songs without repeats. */
export class PlayQueue {
  constructor() {
    this.songs = [];
    this.index = -1;
    this.hasMore = false;
  }

  get current() {
    return this.songs[this.index] ?? null;
  }

  /** Plays `song` now: the queue becomes [the song being left, if any, then `song`]. */
  play(song) {
    const previous = this.current;
    this.songs = previous && previous.id !== song.id ? [previous, song] : [song];
    this.index = this.songs.length - 1;
    this.hasMore = true;
  }

  /** Appends songs not already queued; returns how many were added. */
  append(songs, hasMore) {
    const known = new Set(this.songs.map((s) => s.id));
    let added = 0;
    for (const s of songs) {
      if (!known.has(s.id)) {
        known.add(s.id);
        this.songs.push(s);
        added += 1;
      }
    }
    this.hasMore = hasMore;
    return added;
  }

  /** Songs after the current one. */
  get upNext() {
    return this.songs.slice(this.index + 1);
  }

  /** Whether to ask for more next songs: few are left and the server has more. */
  needsMore() {
    return this.hasMore && this.upNext.length <= REFILL_AT;
  }

  next() {
    if (this.index + 1 >= this.songs.length) return null;
    this.index += 1;
    return this.current;
  }

  previous() {
    if (this.index <= 0) return null;
    this.index -= 1;
    return this.current;
  }

  /** Jumps to the queued song `id`. */
  jump(id) {
    const at = this.songs.findIndex((s) => s.id === id);
    if (at < 0) return null;
    this.index = at;
    return this.current;
  }
}

/** `m:ss` of seconds. */
export function clock(seconds) {
  const s = Math.max(0, Math.floor(seconds || 0));
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
}

/** Why a song was recommended, in words. */
export function why(song) {
  const parts = [];
  if (song.why) {
    if (song.why.als != null) parts.push(`taste ${song.why.als.toFixed(2)}`);
    if (song.why.lyrics != null) parts.push(`lyrics ${song.why.lyrics.toFixed(2)}`);
    return `${parts.join(" + ")} = ${song.score.toFixed(2)}`;
  }
  return {
    als: "matches your taste",
    lyrics: "lyrics like this song",
    hybrid: "your taste and these lyrics",
    popularity: "popular this week",
  }[song.source] ?? "";
}
