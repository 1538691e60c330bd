//! The web dashboard of a real `host run --listen`, in a real headless
//! Chromium driven over WebDriver (issue 17). Every check of the backend
//! goes through the API, as an operator's script would.

use std::path::Path;
use std::time::Duration;

use crate::api::{Listening, entry, get_json, http};
use crate::support::host_toml::HostToml;
use crate::support::*;
use taskhost_fixtures::browser::{Browser, fantoccini};

use fantoccini::Locator;

const LIMIT: Duration = Duration::from_secs(60);

/// The counts `GET /v1/queues` gives for queue `default`.
fn queue(addr: &str) -> serde_json::Value {
    entry(&get_json(addr, "/v1/queues"), "queues", "queue", "default").unwrap_or_default()
}

fn push(addr: &str, lines: &[String]) {
    let body: String = lines
        .iter()
        .map(|p| format!("{}\n", serde_json::json!({ "payload": p })))
        .collect();
    let (status, answer) = http(
        addr,
        "POST",
        "/v1/queues/default/tasks",
        &[("Content-Type", "application/x-ndjson")],
        body.as_bytes(),
    );
    assert_eq!(status, 200, "{answer}");
}

/// Waits (polling the page, not sleeping blindly) until `css` finds an
/// element whose text satisfies `ok`.
async fn wait_text(b: &Browser, css: &str, ok: impl Fn(&str) -> bool) -> String {
    let end = std::time::Instant::now() + LIMIT;
    loop {
        if let Ok(el) = b.client.find(Locator::Css(css)).await
            && let Ok(t) = el.text().await
            && ok(&t)
        {
            return t;
        }
        assert!(std::time::Instant::now() < end, "{css} never matched");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Clicks the element `css` finds; tries again while the page's refresh
/// replaces it (a stale or not yet interactable element).
async fn click(b: &Browser, css: &str) {
    let end = std::time::Instant::now() + LIMIT;
    loop {
        let tried = match b.client.find(Locator::Css(css)).await {
            Ok(el) => el.click().await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match tried {
            Ok(()) => return,
            Err(e) => assert!(std::time::Instant::now() < end, "{css}: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Records the page's console errors, uncaught errors and unhandled
/// rejections from now on (the page is one document: hash routes do not
/// reload it).
async fn catch_console_errors(b: &Browser) {
    b.client
        .execute(
            r#"window.__errors = [];
            const error = console.error.bind(console);
            console.error = (...a) => { window.__errors.push(a.map(String).join(" ")); error(...a); };
            window.addEventListener("error", (e) => window.__errors.push(String(e.message)));
            window.addEventListener("unhandledrejection", (e) => window.__errors.push(String(e.reason)));"#,
            vec![],
        )
        .await
        .unwrap();
}

/// Fails on any error the page logged since [`catch_console_errors`].
async fn assert_no_console_errors(b: &Browser) {
    let errors = b
        .client
        .execute("return window.__errors ?? [];", vec![])
        .await
        .unwrap();
    assert_eq!(errors, serde_json::json!([]), "console errors");
}

/// Checks the page left logged no error, opens `url` and watches it.
async fn goto(b: &Browser, url: &str) {
    assert_no_console_errors(b).await;
    b.client.goto(url).await.unwrap();
    catch_console_errors(b).await;
}

async fn screenshot(b: &Browser, path: &Path) {
    let png = b.client.screenshot().await.unwrap();
    std::fs::write(path, png).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_retries_pauses_and_drains_a_real_host() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let config = HostToml::new(&data)
        .plugin(&plugin("testkit"))
        .raw("config", r#"{ mode = "script" }"#)
        .raw("pool", r#"{ max_attempts = 1, batch_size = 10 }"#)
        .write(tmp.path().join("host.toml"));
    let host = Listening::start(
        host()
            .arg("run")
            .arg("--config")
            .arg(&config)
            .args(["--listen", "127.0.0.1:0"]),
    );
    let addr = host.addr.clone();
    push(&addr, &vec!["fail:boom".to_string(); 5]);
    wait_until("5 dead letters", LIMIT, || queue(&addr)["dead"] == 5);

    let b = Browser::start(1280, 900).await.unwrap();
    goto(&b, &format!("http://{addr}/")).await;
    // The overview shows the queue and its counts, from the API.
    wait_text(&b, r#"tr[data-queue="default"] td[data-col="dead"]"#, |t| {
        t == "5"
    })
    .await;

    // Pause from the page: the backend says paused, and the host leases nothing.
    click(
        &b,
        r#"tr[data-queue="default"] button[data-action="pause"]"#,
    )
    .await;
    wait_until("paused", LIMIT, || queue(&addr)["paused"] == true);
    // The host's pool has seen it (it reads the flag every 500 ms).
    host.wait_for_log("queue paused: not leasing");
    wait_text(&b, r#"tr[data-queue="default"] .badge"#, |t| t == "paused").await;

    // Retry one dead letter from the dead-letter page: it is pending again
    // (and stays so: the queue is paused).
    goto(&b, &format!("http://{addr}/#/dead")).await;
    wait_text(&b, "section.group strong", |t| t.contains("5 dead")).await;
    screenshot(&b, &tmp.path().join("dead-letters.png")).await;
    // Open the group, then retry its first task.
    click(&b, "details.dead-group summary").await;
    click(&b, r#"details.dead-group tr button[data-action="retry"]"#).await;
    wait_until("one dead letter back to pending", LIMIT, || {
        let q = queue(&addr);
        q["dead"] == 4 && q["pending"] == 1
    });

    // Work arrives while paused: nothing is leased.
    push(
        &addr,
        &(0..300).map(|_| "sleep:5".to_string()).collect::<Vec<_>>(),
    );
    goto(&b, &format!("http://{addr}/")).await;
    wait_text(
        &b,
        r#"tr[data-queue="default"] td[data-col="pending"]"#,
        |t| t == "301",
    )
    .await;
    assert_eq!(queue(&addr)["leased"], 0, "a paused queue is not leased");

    // Resume from the page: the queue drains and the live chart moves.
    click(
        &b,
        r#"tr[data-queue="default"] button[data-action="resume"]"#,
    )
    .await;
    let mut fastest = 0.0f64;
    let end = std::time::Instant::now() + LIMIT;
    loop {
        if let Ok(el) = b
            .client
            .find(Locator::Css(
                r#"tr[data-queue="default"] td[data-col="done-rate"]"#,
            ))
            .await
            && let Ok(t) = el.text().await
        {
            fastest = fastest.max(t.parse().unwrap_or(0.0));
        }
        let q = queue(&addr);
        if q["pending"] == 0 && q["leased"] == 0 && fastest > 0.0 {
            break;
        }
        assert!(std::time::Instant::now() < end, "never drained: {q}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let points = b
        .client
        .find(Locator::Css(r#"tr[data-queue="default"] svg.spark"#))
        .await
        .unwrap()
        .attr("data-points")
        .await
        .unwrap()
        .unwrap_or_default();
    assert!(points.parse::<usize>().unwrap_or(0) >= 2, "{points}");
    screenshot(&b, &tmp.path().join("overview.png")).await;
    if let Ok(dir) = std::env::var("TASKHOST_SCREENSHOTS") {
        for f in ["overview.png", "dead-letters.png"] {
            std::fs::copy(tmp.path().join(f), Path::new(&dir).join(f)).unwrap();
        }
    }

    // The plugins page: the version history and the live version's
    // batches with their quantiles.
    goto(&b, &format!("http://{addr}/#/plugins")).await;
    wait_text(
        &b,
        r#"section[data-plugin="testkit"] tr[data-event="loaded"]"#,
        |t| t.contains("loaded"),
    )
    .await;
    let ok = wait_text(
        &b,
        r#"section[data-plugin="testkit"] table.versions td[data-col="ok"]"#,
        |t| t.parse::<u64>().is_ok_and(|n| n > 0),
    )
    .await;
    let p99 = wait_text(
        &b,
        r#"section[data-plugin="testkit"] table.versions td[data-col="p99"]"#,
        |t| t.ends_with('s'),
    )
    .await;
    eprintln!("plugins page: {ok} ok batches, p99 {p99}");
    assert_no_console_errors(&b).await;

    // No console errors: the page's own error line stays empty.
    let status = b
        .client
        .find(Locator::Id("status"))
        .await
        .unwrap()
        .attr("class")
        .await
        .unwrap()
        .unwrap_or_default();
    assert_ne!(status, "error");
    b.close().await.unwrap();
    host.stop();
}

/// Asserts the page is no wider than the window (readable when narrow).
async fn fits(b: &Browser) {
    let widths = b
        .client
        .execute(
            "return [document.documentElement.scrollWidth, window.innerWidth];",
            vec![],
        )
        .await
        .unwrap();
    let (page, window) = (widths[0].as_u64().unwrap(), widths[1].as_u64().unwrap());
    assert!(
        page <= window,
        "the page is {page} px wide in a {window} px window"
    );
}

/// Counts the elements `css` finds.
async fn count(b: &Browser, css: &str) -> usize {
    b.client
        .find_all(Locator::Css(css))
        .await
        .map(|v| v.len())
        .unwrap_or(0)
}

/// 1,000 queues holding 100 dead letters each (100,000), made through the
/// store API on a disk store, then served by a real `host serve`: the
/// overview and the dead-letter page ask the server for one page at a time,
/// so the rows in the page stay bounded, and both page on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_pages_1000_queues_and_100000_dead_letters() {
    use taskhost::queue::disk::{DiskOptions, DiskStore};
    use taskhost::queue::{Action, NewTask, QueueStore, Settle};

    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let made = std::time::Instant::now();
    let store = DiskStore::open(&data, DiskOptions::default(), taskhost::clock::system()).unwrap();
    for i in 0..1000 {
        let q = store.queue(&format!("q{i:04}")).unwrap();
        q.push_batch(
            (0..100)
                .map(|n| NewTask::new(format!("task {n}")))
                .collect(),
        )
        .await
        .unwrap();
        let leased = q.lease(100, Duration::from_secs(600)).await.unwrap();
        let dead = leased
            .iter()
            .map(|t| Settle {
                lease: t.lease(),
                action: Action::DeadLetter(format!("boom {}", t.id % 3)),
            })
            .collect();
        q.settle(dead).await.unwrap();
    }
    store.close().await;
    drop(store);
    eprintln!(
        "1,000 queues, 100,000 dead letters made in {:?}",
        made.elapsed()
    );

    let host = Listening::start(
        host()
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&data),
    );
    let addr = host.addr.clone();
    // A narrow window: the page must fit it without scrolling sideways.
    let b = Browser::start(600, 900).await.unwrap();
    let shown = std::time::Instant::now();
    goto(&b, &format!("http://{addr}/")).await;
    wait_text(&b, "#main .toolbar .muted", |t| {
        t == "1000 queues, page 1 of 10"
    })
    .await;
    wait_text(&b, r#"tr[data-queue="q0000"] td[data-col="dead"]"#, |t| {
        t == "100"
    })
    .await;
    eprintln!("overview shown in {:?}", shown.elapsed());
    assert_eq!(count(&b, "#queues tr").await, 100);
    fits(&b).await;
    click(&b, r#"button[data-action="next"]"#).await;
    wait_text(&b, "#main .toolbar .muted", |t| t.ends_with("page 2 of 10")).await;
    wait_text(&b, "#queues tr:first-child td a", |t| t == "q0100").await;
    assert_eq!(count(&b, "#queues tr").await, 100);
    // Keyboard: the filter field takes typing, and the page follows it.
    let search = b
        .client
        .find(Locator::Css(r#"input[type="search"]"#))
        .await
        .unwrap();
    search.send_keys("q09").await.unwrap();
    wait_text(&b, "#main .toolbar .muted", |t| {
        t == "100 queues, page 1 of 1"
    })
    .await;

    let shown = std::time::Instant::now();
    goto(&b, &format!("http://{addr}/#/dead")).await;
    wait_text(&b, r#"section.group[data-queue="q0000"] strong"#, |t| {
        t.contains("100 dead")
    })
    .await;
    eprintln!("dead letters shown in {:?}", shown.elapsed());
    assert_eq!(count(&b, "section.group").await, 10);
    let rows = count(&b, "#groups tr").await;
    assert!(rows <= 10 * 100, "{rows} rows");
    // Three causes per queue: three groups each.
    assert_eq!(count(&b, "details.dead-group").await, 30);
    fits(&b).await;
    click(&b, r#"button[data-action="next"]"#).await;
    wait_text(&b, "section.group strong", |t| t.starts_with("q0010")).await;
    assert_eq!(count(&b, "section.group").await, 10);
    assert_no_console_errors(&b).await;
    b.close().await.unwrap();
    host.stop();
}
