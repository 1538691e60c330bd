//! The web dashboard in a real headless Chromium (issue 17).

use taskhost_fixtures::browser::{Browser, fantoccini};

#[tokio::test]
async fn the_browser_fixture_renders_a_page() {
    let b = Browser::start(1024, 768).await.unwrap();
    b.client
        .goto("data:text/html,<p id=x>hello</p><script>document.getElementById('x').textContent+=' world'</script>")
        .await
        .unwrap();
    let text = b
        .client
        .find(fantoccini::Locator::Id("x"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(text, "hello world");
    b.close().await.unwrap();
}
