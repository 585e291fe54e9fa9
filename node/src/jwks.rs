//! `--token-jwks-url`: the public keys of RS256 and ES256 client tokens
//! fetched from the application's identity provider (a JWKS document) at
//! start and every `--token-jwks-refresh` seconds, in the background.
//!
//! The room's [`room::TokenKeys`] then holds the keys of `--token-public-key`
//! and `--token-jwks` (files, read once) plus the last JWKS fetched. A fetch
//! that fails (unreachable, not 2xx, over [`MAX_JWKS`], not a JWKS with at
//! least one usable key) keeps the keys in force and is logged; until the
//! first fetch succeeds it is tried again every [`FIRST_RETRY`], so a room
//! that starts while the provider is down serves HS256 and file keys and
//! picks the URL's keys up as soon as it can.
//!
//! A client token that names a key none of them is (the provider added a
//! key since the last fetch: a rotation) makes it fetch again at once
//! instead of at the next refresh; such fetches come at most once every
//! [`MISS_REFETCH`], so tokens with made-up key ids cannot make the room
//! hammer the provider. The token itself is refused; its client's
//! reconnect a moment later finds the new key.

use std::time::Duration;

use proto::keys::PublicKey;
use room::TokenKeys;
use tracing::{info, warn};

/// Largest JWKS document taken.
const MAX_JWKS: usize = 1 << 20;
/// Time one fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Wait before trying again while no fetch has succeeded yet.
const FIRST_RETRY: Duration = Duration::from_secs(5);
/// Least time between two fetches for tokens that named an unknown key.
const MISS_REFETCH: Duration = Duration::from_secs(10);

/// Starts refreshing `keys` from `url` every `every` on the current
/// runtime: each time the keys become `fixed` plus the fetched ones.
pub(crate) fn spawn(url: reqwest::Url, every: Duration, fixed: Vec<PublicKey>, keys: TokenKeys) {
    tokio::spawn(async move {
        let client = match reqwest::Client::builder().timeout(FETCH_TIMEOUT).build() {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "token JWKS: no HTTP client; not fetched");
                return;
            }
        };
        let mut fetched_once = false;
        let mut last_miss: Option<tokio::time::Instant> = None;
        loop {
            // Tokens that named an unknown key until now are answered by
            // this fetch, whatever it brings.
            keys.clear_misses();
            match fetch(&client, &url).await {
                Ok(set) => {
                    let n = set.len();
                    let mut all = fixed.clone();
                    all.extend(set);
                    keys.replace(all);
                    if !fetched_once {
                        info!(%url, keys = n, "token JWKS fetched");
                    }
                    fetched_once = true;
                }
                Err(e) => {
                    warn!(%url, error = %e, "token JWKS fetch failed; the keys in force stay")
                }
            }
            let wait = if fetched_once {
                every
            } else {
                every.min(FIRST_RETRY)
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = keys.missed() => {
                    if let Some(at) = last_miss {
                        tokio::time::sleep_until(at + MISS_REFETCH).await;
                    }
                    last_miss = Some(tokio::time::Instant::now());
                    info!(%url, "token JWKS: a token named a key not known here; fetching again");
                }
            }
        }
    });
}

/// One fetch of the JWKS at `url`.
async fn fetch(client: &reqwest::Client, url: &reqwest::Url) -> Result<Vec<PublicKey>, String> {
    let mut resp = client
        .get(url.clone())
        .send()
        .await
        .map_err(|e| e.without_url().to_string())?;
    if !resp.status().is_success() {
        return Err(format!("answered HTTP {}", resp.status().as_u16()));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| e.without_url().to_string())?
    {
        if body.len() + chunk.len() > MAX_JWKS {
            return Err(format!("larger than {MAX_JWKS} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    PublicKey::from_jwks(&body).map_err(|e| e.to_string())
}
