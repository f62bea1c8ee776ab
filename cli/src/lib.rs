//! The parts of the `recsys` command its tests use as well: the WebDriver client that drives
//! headless Chromium (the web player's browser test and `recsys bench serve --http`).

pub mod webdriver;
