//! Size baseline: what the VM agent already has (a current-thread tokio runtime and
//! serde_json), without this crate. Compare its release size with `size_store` and
//! `size_member`. Prints its resident set size.

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let path = std::env::args().nth(1).unwrap_or_else(|| "size.db".into());
    tokio::task::yield_now().await;
    println!("{}", serde_json::json!({ "path": path, "rss": rss() }));
}

/// VmRSS, RssAnon and RssFile from /proc/self/status.
fn rss() -> String {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        let line = status.lines().find(|l| l.starts_with(name)).unwrap_or("? ?");
        line.split_whitespace().nth(1).unwrap_or("?").to_owned()
    };
    format!("{} kB (anon {} kB, file {} kB)", field("VmRSS:"), field("RssAnon:"), field("RssFile:"))
}
