import { test } from "node:test";
import assert from "node:assert/strict";
import { listenAction, listenEvent, SongClock, PlayQueue, clock, why, lengthOf, ASSUMED_LENGTH_S } from "./player.js";

test("the listen rule: nothing under 2 s, skip under 50 %, complete at 90 % or at the end", () => {
  assert.equal(listenAction(1.9, 200, false), null);
  assert.equal(listenAction(1.9, 200, true), null);
  assert.equal(listenAction(2, 200, false), "skip");
  assert.equal(listenAction(99, 200, false), "skip");
  assert.equal(listenAction(100, 200, false), "listen");
  assert.equal(listenAction(179, 200, false), "listen");
  assert.equal(listenAction(180, 200, false), "complete");
  assert.equal(listenAction(20, 200, true), "complete");
  assert.equal(listenAction(20, 0, false), "listen", "unknown length");
});

test("an event carries whole seconds, the artist and the time", () => {
  const song = { id: "t1", artist_id: "a1", duration_s: 200.7 };
  const e = listenEvent("u1", song, 120.9, false, 1700000000000);
  assert.deepEqual(e, {
    user_id: "u1", track_id: "t1", artist_id: "a1", action: "listen",
    duration_s: 120, total_duration_s: 200, timestamp_ms: 1700000000000, source: "web",
  });
  assert.equal(listenEvent("u1", song, 1, false, 0), null);
  // Unknown length: judged against the assumed one, logged as unknown (0).
  const unknown = listenEvent("u1", { id: "t2", artist_id: "a1", duration_s: null }, 200, false, 5);
  assert.equal(unknown.action, "complete");
  assert.equal(unknown.total_duration_s, 0);
  assert.equal(lengthOf({ duration_s: null }), ASSUMED_LENGTH_S);
});

test("the 30-second rule fires once, after 30 s really listened (seeking does not count)", () => {
  const c = new SongClock(200);
  c.play(0);
  assert.deepEqual(c.tick(29_000), { record: false, ended: false });
  c.seek(150, 29_000);
  assert.equal(c.tick(29_500).record, false, "29.5 s listened");
  c.pause(29_500);
  assert.equal(c.tick(100_000).record, false, "paused: no time passes");
  c.play(100_000);
  assert.equal(c.tick(100_600).record, true);
  assert.equal(c.tick(110_000).record, false, "only once per song");
  assert.ok(Math.abs(c.listened - 39.5) < 1e-9);
});

test("the clock stops at the end and a faster clock listens faster", () => {
  const c = new SongClock(10, 4);
  c.play(0);
  assert.deepEqual(c.tick(2_000), { record: false, ended: false });
  assert.equal(c.position, 8);
  assert.deepEqual(c.tick(5_000), { record: false, ended: true });
  assert.equal(c.position, 10);
  assert.equal(c.listened, 10);
  assert.equal(c.playing, false);
});

test("the queue refills at 7 left, never repeats, and previous stops at the start", () => {
  const q = new PlayQueue();
  const song = (i) => ({ id: `s${i}` });
  q.play(song(0));
  assert.ok(q.needsMore());
  assert.equal(q.append([song(1), song(2), song(1), song(0)], true), 2);
  for (let i = 3; i < 10; i++) q.append([song(i)], true);
  assert.equal(q.upNext.length, 9);
  assert.equal(q.needsMore(), false);
  q.next();
  q.next();
  assert.equal(q.upNext.length, 7);
  assert.equal(q.needsMore(), true);
  q.append([], false);
  assert.equal(q.needsMore(), false, "the server has no more");
  assert.equal(q.previous().id, "s1");
  q.previous();
  assert.equal(q.previous(), null);
  // Playing from the feed keeps the song being left as "previous".
  q.play(song(42));
  assert.deepEqual(q.songs.map((s) => s.id), ["s0", "s42"]);
  assert.equal(q.jump("s0").id, "s0");
});

test("times and reasons read well", () => {
  assert.equal(clock(0), "0:00");
  assert.equal(clock(61.9), "1:01");
  assert.equal(why({ source: "hybrid", score: 0.75, why: { als: 0.5, lyrics: 0.25 } }), "taste 0.50 + lyrics 0.25 = 0.75");
  assert.equal(why({ source: "popularity", score: 0 }), "popular this week");
});
