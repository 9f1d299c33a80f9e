//! The files of `deploy/`, checked offline with the tools `./scripts/test`
//! installs (hadolint, kubectl's kustomize, kubernetes-validate, promtool):
//!
//! - `image`: the Dockerfile passes hadolint; multi-stage, pinned, non-root, no secrets
//! - `compose`: the Compose stack's structure, the files it mounts, engines beside workers
//! - `configs`: every config through `tollgate check-config`, with the environment each
//!   container of the Compose and Kubernetes stacks gives it
//! - `k8s`: both overlays rendered, validated against the OpenAPI schemas of pinned
//!   Kubernetes versions, selectors, ports, secrets and security contexts
//! - `roles`: gateways, workers with their engines, and Redis, object by object
//! - `monitoring`: `promtool`, the Operator's rules equal to the alerts, every metric
//!   named in `deploy/` present in a real `/metrics`

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

#[path = "deploy/compose.rs"]
mod compose;
#[path = "deploy/configs.rs"]
mod configs;
#[path = "deploy/image.rs"]
mod image;
#[path = "deploy/k8s.rs"]
mod k8s;
#[path = "deploy/monitoring.rs"]
mod monitoring;
#[path = "deploy/roles.rs"]
mod roles;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::deploy::*;
use common::*;
use serde_json::Value;

/// The oldest and newest Kubernetes versions the manifests are validated against.
const K8S_VERSIONS: &[&str] = &["1.30.0", "1.37.0"];
/// The overlays of `deploy/k8s`.
const OVERLAYS: &[&str] = &["sim", "gpu"];
/// Keys of the Secret `tollgate` the manifests read (deploy/README.md shows how to create it).
const SECRET_KEYS: &[&str] = &[
    "jwt-secret",
    "cluster-secret",
    "ops-client-secret",
    "redis-password",
    "redis-url",
    "hf-token",
];

fn deploy() -> PathBuf {
    repo().join("deploy")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn strs(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| a.iter().map(|s| s.as_str().unwrap().to_owned()).collect())
        .unwrap_or_default()
}

/// The value after `flag` in an argument list.
fn flag<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

/// Every value of a repeated `flag`.
fn flags<'a>(args: &'a [String], flag: &str) -> Vec<&'a str> {
    args.windows(2)
        .filter(|w| w[0] == flag)
        .map(|w| w[1].as_str())
        .collect()
}

/// A top-level or `[section]` integer key of a TOML text.
fn toml_int(toml: &str, section: Option<&str>, key: &str) -> u64 {
    let mut current = None;
    for line in toml.lines().map(str::trim) {
        if line.starts_with('[') {
            current = Some(line.trim_matches(['[', ']']).to_owned());
        } else if let Some((k, v)) = line.split_once('=')
            && k.trim() == key
            && current.as_deref() == section
        {
            return v
                .split('#')
                .next()
                .unwrap()
                .trim()
                .replace('_', "")
                .parse()
                .unwrap();
        }
    }
    panic!("no {section:?}.{key} in:\n{toml}");
}

fn assert_pinned(image: &str, whose: &str) {
    let name_and_tag = image.rsplit('/').next().unwrap();
    let tag = name_and_tag.split_once(':').map(|(_, t)| t);
    assert!(
        image.contains("@sha256:")
            || tag.is_some_and(|t| t != "latest" && t.chars().any(|c| c.is_ascii_digit())),
        "{whose}: image {image} is not pinned to a version"
    );
}

fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            c => out.push(c),
        }
    }
    out
}
