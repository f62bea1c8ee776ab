//! A small W3C WebDriver client over `reqwest`: starts Debian's `chromedriver` with headless
//! `chromium` and drives pages (the web player's browser test, and the page-load figure of
//! `recsys bench serve --http`). Every wait has a deadline.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use base64::Engine;
use serde_json::{Value, json};

/// The W3C name of an element reference in JSON.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Where the browser and its driver are: `RECSYS_CHROMIUM` / `RECSYS_CHROMEDRIVER`, else
/// Debian's paths. `None` when either is missing.
pub fn locate() -> Option<(PathBuf, PathBuf)> {
    let find = |var: &str, default: &str| {
        let p = PathBuf::from(std::env::var(var).unwrap_or_else(|_| default.to_string()));
        p.exists().then_some(p)
    };
    Some((
        find("RECSYS_CHROMIUM", "/usr/bin/chromium")?,
        find("RECSYS_CHROMEDRIVER", "/usr/bin/chromedriver")?,
    ))
}

/// One headless browser session; ends (and stops its driver) when dropped.
pub struct Browser {
    http: reqwest::Client,
    session: String,
    driver: Child,
    _profile: tempfile::TempDir,
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl Browser {
    /// Starts `chromedriver` and a headless `chromium` with a fresh profile and the flags this
    /// machine's closed network needs, at `width`×`height`.
    pub async fn start(
        chromium: &Path,
        chromedriver: &Path,
        width: u32,
        height: u32,
    ) -> Result<Browser> {
        let port = free_port().context("a port for chromedriver")?;
        let driver = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", chromedriver.display()))?;
        let profile = tempfile::tempdir().context("a browser profile folder")?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()?;
        let base = format!("http://127.0.0.1:{port}");
        let mut browser = Browser {
            http,
            session: base.clone(),
            driver,
            _profile: profile,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ready = browser
                .http
                .get(format!("{base}/status"))
                .send()
                .await
                .ok()
                .map(|r| r.status().is_success())
                .unwrap_or(false);
            if ready {
                break;
            }
            if Instant::now() > deadline {
                bail!("chromedriver at {base} did not get ready within 20 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([
            format!("--user-data-dir={}", browser._profile.path().display()),
            format!("--window-size={width},{height}"),
        ])
        .collect::<Vec<_>>();
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": chromium, "args": args},
        }}});
        let created = browser.call("POST", "/session", Some(caps)).await?;
        let id = created["sessionId"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        browser.session = format!("{base}/session/{id}");
        Ok(browser)
    }

    /// One WebDriver command; `path` is relative to the session (or the driver for `/session`).
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value> {
        let url = format!("{}{path}", self.session);
        let request = match method {
            "GET" => self.http.get(&url),
            "DELETE" => self.http.delete(&url),
            _ => self
                .http
                .post(&url)
                .header("content-type", "application/json")
                .body(serde_json::to_vec(&body.unwrap_or_else(|| json!({})))?),
        };
        let response = request
            .send()
            .await
            .with_context(|| format!("WebDriver {url}"))?;
        let status = response.status();
        let bytes = response.bytes().await?;
        let value: Value = serde_json::from_slice(&bytes)
            .with_context(|| format!("WebDriver {url}: the answer is not JSON"))?;
        let value = value.get("value").cloned().unwrap_or(Value::Null);
        if !status.is_success() {
            bail!(
                "WebDriver {method} {path}: {}",
                value["message"].as_str().unwrap_or("failed")
            );
        }
        Ok(value)
    }

    pub async fn goto(&self, url: &str) -> Result<()> {
        self.call("POST", "/url", Some(json!({"url": url}))).await?;
        Ok(())
    }

    /// Runs `script` (a function body; `arguments` holds `args`) in the page and returns its
    /// value.
    pub async fn eval(&self, script: &str, args: Vec<Value>) -> Result<Value> {
        self.call(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": args})),
        )
        .await
    }

    /// The first element matching `css`.
    pub async fn find(&self, css: &str) -> Result<String> {
        let found = self
            .call(
                "POST",
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await?;
        match found[ELEMENT].as_str() {
            Some(id) => Ok(id.to_string()),
            None => bail!("WebDriver: no element reference for `{css}` in {found}"),
        }
    }

    pub async fn click(&self, css: &str) -> Result<()> {
        let el = self.find(css).await?;
        self.call("POST", &format!("/element/{el}/click"), None)
            .await?;
        Ok(())
    }

    /// Types `text` into the element matching `css`.
    pub async fn type_into(&self, css: &str, text: &str) -> Result<()> {
        let el = self.find(css).await?;
        self.call(
            "POST",
            &format!("/element/{el}/value"),
            Some(json!({"text": text})),
        )
        .await?;
        Ok(())
    }

    /// Waits until `script` (a function body) returns something other than null, false, 0 or
    /// an empty string, and returns it.
    pub async fn wait_for(&self, what: &str, script: &str, timeout: Duration) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.eval(script, vec![]).await?;
            let truthy = match &v {
                Value::Null | Value::Bool(false) => false,
                Value::Number(n) => n.as_f64() != Some(0.0),
                Value::String(s) => !s.is_empty(),
                _ => true,
            };
            if truthy {
                return Ok(v);
            }
            if Instant::now() > deadline {
                bail!("waited {} s for {what}", timeout.as_secs());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Resizes the window (a phone-width screen, say).
    pub async fn resize(&self, width: u32, height: u32) -> Result<()> {
        self.call(
            "POST",
            "/window/rect",
            Some(json!({"width": width, "height": height})),
        )
        .await?;
        Ok(())
    }

    /// Saves a PNG of the page.
    pub async fn screenshot(&self, path: &Path) -> Result<()> {
        let shot = self.call("GET", "/screenshot", None).await?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot.as_str().unwrap_or_default())
            .context("the screenshot is not base64")?;
        std::fs::write(path, png).with_context(|| format!("writing {}", path.display()))
    }

    /// Ends the session (the browser exits) and stops the driver.
    pub async fn quit(self) {
        self.call("DELETE", "", None).await.ok();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The session ends with its driver: chromedriver takes its browser down when killed.
        self.driver.kill().ok();
        self.driver.wait().ok();
    }
}
