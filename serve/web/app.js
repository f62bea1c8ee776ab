// The web player: profiles, the home feed, search, the now-playing bar and the "up next"
// queue. State that tests (and curious people) can read is mirrored in data- attributes:
// body[data-feed-shown-ms], body[data-last-event], #player[data-song-id|data-recorded].

import { api } from "./api.js";
import { PlayQueue, SongClock, clock, lengthOf, listenEvent, why } from "./player.js";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
/** Clock speed (`?speed=20` makes 30 s pass in 1.5 s: for demos and tests). */
const SPEED = Math.max(0.1, Number(params.get("speed")) || 1);
const SAVED = "recsys.user";

const state = {
  user: null,
  feed: { ids: new Set(), hasMore: true, loading: false },
  search: { query: "", skip: 0, hasMore: false, loading: false },
  mode: "home",
  queue: new PlayQueue(),
  clock: null,
  fetchingNext: false,
  usersAfter: "",
};

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c);
  return e;
}

function showError(where, e) {
  $(where).textContent = e ? e.message ?? String(e) : "";
}

function hue(text) {
  let h = 0;
  for (const ch of text) h = (h * 31 + ch.codePointAt(0)) % 360;
  return h;
}

// ---- profiles ----

function profileButton(user) {
  const name = user.name || user.id;
  return el("li", {}, el("button", { class: "profile", "data-user-id": user.id, onclick: () => choose(user) },
    el("span", { class: "avatar", "aria-hidden": "true" }, name.slice(0, 1).toUpperCase()),
    el("span", { class: "title" }, name)));
}

async function loadProfiles(more) {
  try {
    const page = await api.users(50, more ? state.usersAfter : "");
    if (!more) $("profile-list").replaceChildren();
    for (const u of page.users) $("profile-list").append(profileButton(u));
    state.usersAfter = page.users.at(-1)?.id ?? state.usersAfter;
    $("more-profiles").hidden = !page.has_more;
    showError("profiles-error", null);
  } catch (e) {
    showError("profiles-error", e);
  }
}

async function addProfile(event) {
  event.preventDefault();
  const name = $("profile-name").value.trim();
  if (!name) return;
  try {
    const { user } = await api.createUser(name);
    const item = profileButton(user);
    $("profile-list").prepend(item);
    $("profile-name").value = "";
    item.querySelector("button").focus();
    showError("profiles-error", null);
  } catch (e) {
    showError("profiles-error", e);
  }
}

function choose(user) {
  state.user = user;
  localStorage.setItem(SAVED, user.id);
  $("profiles").hidden = true;
  $("app").hidden = false;
  $("who").textContent = `Listening as ${user.name || user.id}`;
  showHome();
  loadFeed(true);
}

function switchProfile() {
  leaveSong(false);
  stopSong();
  state.user = null;
  state.queue = new PlayQueue();
  renderQueue();
  localStorage.removeItem(SAVED);
  $("app").hidden = true;
  $("profiles").hidden = false;
  loadProfiles(false);
}

// ---- feed and search ----

function cover(song) {
  return el("span", { class: "cover", style: `background: hsl(${hue(song.artist)} 60% 55%)`, "aria-hidden": "true" },
    (song.title || "?").slice(0, 1).toUpperCase());
}

function card(song) {
  return el("li", {}, el("button", {
    class: "card", "data-song-id": song.id, onclick: () => playSong(song),
    "aria-label": `Play ${song.title} by ${song.artist}`,
  }, cover(song), el("span", { class: "title" }, song.title), el("span", { class: "artist" }, song.artist),
  el("span", { class: "time" }, song.duration_s > 0 ? clock(song.duration_s) : ""), el("span", { class: "why" }, why(song))));
}

function row(song, onclick, current = false) {
  return el("li", current ? { class: "current" } : {}, el("button", {
    class: "row", "data-song-id": song.id, onclick, "aria-label": `Play ${song.title} by ${song.artist}`,
  }, el("span", { class: "title" }, song.title), el("span", { class: "time" }, song.duration_s > 0 ? clock(song.duration_s) : ""),
  el("span", { class: "artist" }, song.artist), song.source ? el("span", { class: "why" }, why(song)) : ""));
}

async function loadFeed(refresh) {
  const f = state.feed;
  if (!state.user || f.loading || (!refresh && !f.hasMore)) return;
  f.loading = true;
  try {
    const page = await api.feed(state.user.id, refresh);
    if (refresh) {
      f.ids.clear();
      $("feed").replaceChildren();
    }
    for (const s of page.songs) {
      if (f.ids.has(s.id)) continue;
      f.ids.add(s.id);
      $("feed").append(card(s));
    }
    f.hasMore = page.has_more;
    $("feed-end").textContent = f.hasMore ? "" : "That is all for this session.";
    if (!document.body.dataset.feedShownMs && f.ids.size > 0) {
      document.body.dataset.feedShownMs = String(Math.round(performance.now()));
    }
    showError("player-error", null);
  } catch (e) {
    showError("player-error", e);
  } finally {
    f.loading = false;
  }
  nearBottom();
}

async function loadResults(first) {
  const s = state.search;
  if (s.loading || (!first && !s.hasMore)) return;
  s.loading = true;
  try {
    if (first) {
      s.skip = 0;
      $("result-list").replaceChildren();
    }
    const page = await api.search(s.query, s.skip);
    for (const song of page.songs) $("result-list").append(row(song, () => playSong(song)));
    s.skip += page.songs.length;
    s.hasMore = page.has_more;
    $("results-label").textContent = `Results for “${s.query}”`;
    $("results-end").textContent = s.skip === 0 ? "No songs match." : s.hasMore ? "" : "~ End of results ~";
    showError("player-error", null);
  } catch (e) {
    showError("player-error", e);
  } finally {
    s.loading = false;
  }
  nearBottom();
}

function showHome() {
  state.mode = "home";
  $("home").hidden = false;
  $("results").hidden = true;
}

function search(event) {
  event.preventDefault();
  const query = $("search-box").value.trim();
  if (!query) return showHome();
  state.search.query = query;
  state.mode = "search";
  $("home").hidden = true;
  $("results").hidden = false;
  loadResults(true);
}

/** Infinite scroll: loads the next page when the end of the list is near (or on screen). */
function nearBottom() {
  const main = $("main");
  if (main.scrollTop + main.clientHeight < main.scrollHeight - 300) return;
  if (state.mode === "home") loadFeed(false);
  else loadResults(false);
}

// ---- playing ----

function renderQueue() {
  const q = state.queue;
  $("queue").replaceChildren(...q.upNext.map((s) => row(s, () => jump(s.id))));
  $("queue-end").textContent = q.current && !q.hasMore && q.upNext.length === 0 ? "~ End of the queue ~" : "";
}

function renderSong() {
  const s = state.queue.current;
  const c = state.clock;
  $("now-title").textContent = s ? s.title : "Nothing playing";
  $("now-artist").textContent = s ? s.artist : "";
  $("now-why").textContent = s && s.source ? `Why: ${why(s)}` : "";
  $("player").dataset.songId = s ? s.id : "";
  renderTime();
  $("play").textContent = c && c.playing ? "Pause" : "Play";
  $("play").setAttribute("aria-label", c && c.playing ? "Pause" : "Play");
}

function renderTime() {
  const c = state.clock;
  $("pos").textContent = clock(c ? c.position : 0);
  const s = state.queue.current;
  $("dur").textContent = clock(c ? c.duration : 0) + (s && !(s.duration_s > 0) ? " (length unknown)" : "");
  $("seek").max = String(Math.floor(c ? c.duration : 0));
  if (document.activeElement !== $("seek")) $("seek").value = String(Math.floor(c ? c.position : 0));
  $("player").dataset.listened = c ? c.listened.toFixed(1) : "0";
}

/** Logs the song being left (the listen rule decides what, if anything). */
function leaveSong(ended, beacon = false) {
  const s = state.queue.current;
  const c = state.clock;
  if (!s || !c || !state.user || c.logged) return;
  c.pause(performance.now());
  c.logged = true;
  const event = listenEvent(state.user.id, s, c.listened, ended, Date.now());
  if (!event) return;
  if (beacon) {
    api.beacon(event);
    return;
  }
  api.logEvent(event).then(() => {
    document.body.dataset.lastEvent = JSON.stringify(event);
  }, (e) => showError("player-error", e));
}

function stopSong() {
  state.clock = null;
  renderSong();
}

function start(song) {
  state.clock = new SongClock(lengthOf(song), SPEED);
  state.clock.play(performance.now());
  $("player").dataset.recorded = "";
  renderSong();
}

async function moreNext(refresh) {
  const q = state.queue;
  const current = q.current;
  if (!current || state.fetchingNext) return;
  state.fetchingNext = true;
  try {
    const page = await api.next(state.user.id, current.id, refresh);
    q.append(page.songs, page.has_more);
    renderQueue();
  } catch (e) {
    showError("player-error", e);
  } finally {
    state.fetchingNext = false;
  }
}

function playSong(song) {
  leaveSong(false);
  state.queue.play(song);
  start(song);
  renderQueue();
  moreNext(true);
}

async function next(ended = false) {
  leaveSong(ended);
  const q = state.queue;
  if (q.upNext.length === 0 && q.hasMore) await moreNext(false);
  const song = q.next();
  if (!song) return stopSong();
  start(song);
  renderQueue();
  if (q.needsMore()) moreNext(false);
}

function previous() {
  leaveSong(false);
  const song = state.queue.previous();
  if (song) start(song);
  else if (state.queue.current) start(state.queue.current);
  renderQueue();
}

function jump(id) {
  leaveSong(false);
  const song = state.queue.jump(id);
  if (song) start(song);
  renderQueue();
  if (state.queue.needsMore()) moreNext(false);
}

function togglePlay() {
  const c = state.clock;
  if (!c) {
    const first = state.queue.current;
    if (first) start(first);
    return;
  }
  if (c.playing) c.pause(performance.now());
  else if (c.ended) start(state.queue.current);
  else c.play(performance.now());
  renderSong();
}

function seekBy(seconds) {
  const c = state.clock;
  if (c) c.seek(c.position + seconds, performance.now());
  renderTime();
}

function tick() {
  const c = state.clock;
  const s = state.queue.current;
  if (!c || !s) return;
  const { record, ended } = c.tick(performance.now());
  if (record) {
    api.recordPlay(state.user.id, s.id).then(() => {
      $("player").dataset.recorded = s.id;
    }, (e) => showError("player-error", e));
  }
  renderTime();
  if (ended && !c.logged) {
    if ($("autoplay").checked) next(true);
    else {
      leaveSong(true);
      renderSong();
    }
  }
}

function keys(event) {
  const t = event.target;
  const typing = t instanceof HTMLInputElement && t.type !== "checkbox" && t.type !== "range";
  if (typing || $("app").hidden) return;
  if (event.key === " " && !(t instanceof HTMLButtonElement)) {
    event.preventDefault();
    togglePlay();
  } else if (event.key === "ArrowRight" || event.key === "ArrowLeft") {
    if (t === $("seek") && !event.shiftKey) return;
    event.preventDefault();
    const forward = event.key === "ArrowRight";
    if (event.shiftKey) forward ? next() : previous();
    else seekBy(forward ? 10 : -10);
  }
}

async function restore() {
  const saved = localStorage.getItem(SAVED);
  if (!saved) return false;
  try {
    const { user } = await api.user(saved);
    choose(user);
    return true;
  } catch {
    localStorage.removeItem(SAVED);
    return false;
  }
}

function init() {
  $("add-profile").addEventListener("submit", addProfile);
  $("more-profiles").addEventListener("click", () => loadProfiles(true));
  $("switch-profile").addEventListener("click", switchProfile);
  $("search").addEventListener("submit", search);
  $("back-home").addEventListener("click", showHome);
  $("main").addEventListener("scroll", nearBottom, { passive: true });
  $("play").addEventListener("click", togglePlay);
  $("next").addEventListener("click", () => next());
  $("prev").addEventListener("click", previous);
  $("seek").addEventListener("input", () => {
    const c = state.clock;
    if (c) c.seek(Number($("seek").value), performance.now());
    renderTime();
  });
  document.addEventListener("keydown", keys);
  addEventListener("pagehide", () => leaveSong(false, true));
  setInterval(tick, 250);
  restore().then((restored) => restored || loadProfiles(false));
}

init();
