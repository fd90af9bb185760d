//! The client subcommands: thin HTTP calls against any node.

use anyhow::{bail, Context, Result};
use reqwest::StatusCode;

/// Which node to talk to.
#[derive(clap::Args, Debug)]
pub struct Endpoint {
    /// A node's HTTP endpoint, e.g. http://127.0.0.1:7101
    #[arg(long)]
    pub endpoint: String,
}

impl Endpoint {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.endpoint.trim_end_matches('/'))
    }
}

fn key_path(key: &str) -> String {
    let mut out = String::from("/kv/");
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

async fn check(response: reqwest::Response) -> Result<(StatusCode, String)> {
    let status = response.status();
    let body = response.text().await.context("reading the response")?;
    if status.is_server_error() || status == StatusCode::BAD_REQUEST {
        bail!("{status}: {body}");
    }
    Ok((status, body))
}

fn http() -> reqwest::Client {
    reqwest::Client::new()
}

pub async fn put(ep: &Endpoint, key: &str, value: String) -> Result<()> {
    check(
        http()
            .put(ep.url(&key_path(key)))
            .body(value)
            .send()
            .await?,
    )
    .await?;
    println!("OK");
    Ok(())
}

pub async fn get(ep: &Endpoint, key: &str, consistency: &str) -> Result<()> {
    let url = format!("{}?consistency={consistency}", ep.url(&key_path(key)));
    let (status, body) = check(http().get(url).send().await?).await?;
    if status == StatusCode::NOT_FOUND {
        bail!("{key}: not found");
    }
    println!("{body}");
    Ok(())
}

pub async fn delete(ep: &Endpoint, key: &str) -> Result<()> {
    let (status, _) = check(http().delete(ep.url(&key_path(key))).send().await?).await?;
    println!(
        "{}",
        if status == StatusCode::OK {
            "deleted"
        } else {
            "absent"
        }
    );
    Ok(())
}

pub async fn cas(ep: &Endpoint, key: &str, expect: Option<String>, value: String) -> Result<()> {
    let body = serde_json::json!({ "expect": expect, "value": value });
    let url = ep.url(&format!("{}/cas", key_path(key)));
    let (status, body) = check(http().post(url).json(&body).send().await?).await?;
    if status == StatusCode::CONFLICT {
        bail!("not swapped: {body}");
    }
    println!("swapped");
    Ok(())
}

pub async fn status(ep: &Endpoint) -> Result<()> {
    let (_, body) = check(http().get(ep.url("/status")).send().await?).await?;
    let value: serde_json::Value = serde_json::from_str(&body)?;
    println!("{}", serde_json::to_string_pretty(&value)?);
    Ok(())
}

pub async fn leave(ep: &Endpoint) -> Result<()> {
    check(http().post(ep.url("/cluster/leave")).send().await?).await?;
    println!("left");
    Ok(())
}
