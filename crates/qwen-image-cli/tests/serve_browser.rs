//! The web page of `qwen-image serve` in a real headless browser (Chromium through
//! ChromeDriver, driven over WebDriver): type a prompt and the settings, click Generate, the
//! progress runs, the picture appears — the very image the API gives for that request, pixel
//! for pixel — and it goes into the session's history with its parameters.
//!
//! Needs `chromedriver` and Chromium (Debian: `chromium-driver`, `chromium`; `scripts/test.sh`
//! installs them). `QWEN_SKIP_BROWSER_TEST=1` skips it where no browser can be installed;
//! `QWEN_SCREENSHOT=FILE.png` saves a screenshot of the page (the README's).

mod common;
mod server;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{ClientBuilder, Locator};
use serde_json::json;
use server::*;

struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Starts chromedriver and waits until it answers.
fn chromedriver() -> Option<(Driver, String)> {
    let port = free_port();
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let driver = Driver(child);
    let url = format!("http://127.0.0.1:{port}");
    let agent = client(Duration::from_secs(2));
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(20) {
        if agent.get(&format!("{url}/status")).call().is_ok() {
            return Some((driver, url));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn type_a_prompt_click_and_the_picture_appears() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::var("QWEN_SKIP_BROWSER_TEST").as_deref() == Ok("1") {
        eprintln!("skipped: QWEN_SKIP_BROWSER_TEST=1");
        return Ok(());
    }
    let Some((_driver, driver_url)) = chromedriver() else {
        panic!(
            "chromedriver did not start: install Chromium and ChromeDriver (Debian: apt-get \
             install chromium chromium-driver; scripts/test.sh does), or set \
             QWEN_SKIP_BROWSER_TEST=1"
        );
    };
    let s = start(&[]);
    let mut options = json!({"args": [
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--window-size=1280,860", "--force-color-profile=srgb",
    ]});
    if std::path::Path::new("/usr/bin/chromium").exists() {
        options["binary"] = json!("/usr/bin/chromium");
    }
    let mut caps = serde_json::Map::new();
    caps.insert("goog:chromeOptions".into(), options);
    let browser = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&driver_url)
        .await?;

    let result = async {
        browser.goto(&s.url).await?;
        let fill = |id: &'static str, value: &'static str| {
            let browser = browser.clone();
            async move {
                let e = browser.find(Locator::Id(id)).await?;
                e.clear().await?;
                e.send_keys(value).await?;
                Ok::<_, fantoccini::error::CmdError>(())
            }
        };
        fill("prompt", "a red fox in the snow").await?;
        fill("width", "64").await?;
        fill("height", "48").await?;
        fill("steps", "6").await?;
        fill("seed", "5").await?;
        browser.find(Locator::Id("generate")).await?.click().await?;

        // The picture appears in the history (the job succeeded and the image was fetched).
        let t = Instant::now();
        loop {
            let items = browser.find_all(Locator::Css("#history li")).await?;
            if !items.is_empty() {
                break;
            }
            let status = browser.find(Locator::Id("status")).await?.text().await?;
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "no picture after 60 s; status: {status}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let status = browser.find(Locator::Id("status")).await?.text().await?;
        assert!(status.starts_with("done in"), "{status}");
        assert!(status.contains("seed 5"), "{status}");
        let history = browser
            .find(Locator::Css("#history li"))
            .await?
            .text()
            .await?;
        assert!(history.contains("a red fox in the snow"), "{history}");
        assert!(history.contains("64x48, 6 steps, seed 5"), "{history}");
        let progress = browser
            .execute("return document.getElementById('progress').value;", vec![])
            .await?;
        assert_eq!(progress.as_f64(), Some(1.0));

        // The pixels shown are the API's image for the same request.
        let shown = browser
            .execute(
                "const img = document.getElementById('result');
                 const c = document.createElement('canvas');
                 c.width = img.naturalWidth; c.height = img.naturalHeight;
                 const ctx = c.getContext('2d');
                 ctx.drawImage(img, 0, 0);
                 const d = ctx.getImageData(0, 0, c.width, c.height).data;
                 const rgb = [];
                 for (let i = 0; i < d.length; i += 4) rgb.push(d[i], d[i + 1], d[i + 2]);
                 return [c.width, c.height, rgb];",
                vec![],
            )
            .await?;
        if let Ok(path) = std::env::var("QWEN_SCREENSHOT") {
            std::fs::write(path, browser.screenshot().await?)?;
        }
        Ok::<_, Box<dyn std::error::Error>>(shown)
    }
    .await;
    browser.close().await?;
    let shown = result?;
    assert_eq!(shown[0], 64);
    assert_eq!(shown[1], 48);
    let shown: Vec<u8> = shown[2]
        .as_array()
        .ok_or("pixels")?
        .iter()
        .map(|v| v.as_u64().unwrap_or(999) as u8)
        .collect();
    let agent = client(Duration::from_secs(60));
    let (code, res) = post(
        &s,
        &agent,
        "/v1/images/generations",
        &json!({"prompt": "a red fox in the snow", "size": "64x48", "steps": 6, "seed": 5}),
    );
    assert_eq!(code, 200, "{res}");
    let (_, _, want) = b64_pixels(res["data"][0]["b64_json"].as_str().ok_or("b64")?);
    assert!(
        shown == want,
        "the page shows another image than the API gives"
    );
    Ok(())
}
