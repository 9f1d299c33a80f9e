//! Compatibility with the official OpenAI Python SDK, proven by running it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::*;

#[tokio::test]
async fn the_official_openai_python_sdk_works_against_the_gateway() {
    let dir = temp_dir();
    let up = up(dir.path(), &[]).await;
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/openai_sdk_check.py");
    let out = Command::new(python())
        .arg(&script)
        .env("TOLLGATE_BASE", &up.base)
        .env("TOLLGATE_CLIENT_ID", &up.infer.0)
        .env("TOLLGATE_CLIENT_SECRET", &up.infer.1)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "SDK check failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    for check in [
        "chat ok",
        "chat stream ok",
        "completions ok",
        "completions stream ok",
        "errors ok",
    ] {
        assert!(stdout.contains(check), "missing `{check}` in:\n{stdout}");
    }
}
