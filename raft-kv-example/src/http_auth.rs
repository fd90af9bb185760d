//! Bearer tokens for the HTTP API: `--auth-token-file` and `--admin-token-file`.
//!
//! # Roles
//!
//! With no token file, the API is open (for loopback and trusted networks only). When any
//! token file is given, every route needs `Authorization: Bearer <token>`:
//!
//! | route                              | accepted tokens            |
//! |------------------------------------|----------------------------|
//! | `/cluster/*` (membership, leader)  | admin                      |
//! | everything else (`/kv`, `/status`, `/metrics`) | regular or admin |
//!
//! When only `--auth-token-file` is given, its tokens are both regular and admin: a one-role
//! deployment, announced in a start-up log line. When only `--admin-token-file` is given,
//! there are only admin tokens.
//!
//! A missing or malformed `Authorization` header is answered 401 with
//! `WWW-Authenticate: Bearer`; a token that matches nothing, or a regular token on an admin
//! route, 403.
//!
//! # Files
//!
//! One token per line; blank lines and lines starting with `#` are ignored; surrounding
//! whitespace is trimmed. A token is at least [`MIN_TOKEN_LEN`] visible ASCII characters with
//! no spaces (e.g. `openssl rand -hex 32`). A file with no token, a short token, or a file
//! that group or others may read is refused at start-up, naming the file and line (never the
//! token).
//!
//! # Comparison
//!
//! Only SHA-256 digests of the tokens are kept. A presented token is hashed and compared with
//! every stored digest in constant time ([`subtle`]), without stopping at the first match, so
//! the time taken tells nothing about which bytes or which token matched.

use std::path::Path;

use anyhow::{bail, Context, Result};
use axum::http::{HeaderValue, StatusCode};
use ring::digest::{digest, SHA256};
use subtle::{Choice, ConstantTimeEq};

/// Shortest token accepted in a token file, in characters.
pub const MIN_TOKEN_LEN: usize = 16;

/// What a route needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Data and read-only routes: a regular or an admin token.
    Data,
    /// `/cluster/*`: an admin token.
    Admin,
}

impl Access {
    /// The access a request path needs.
    pub fn of_path(path: &str) -> Access {
        if path == "/cluster" || path.starts_with("/cluster/") {
            Access::Admin
        } else {
            Access::Data
        }
    }
}

/// Why a request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Denied {
    /// No `Authorization` header: 401.
    Missing,
    /// An `Authorization` header that is not `Bearer <token>`: 401.
    Malformed,
    /// A well-formed token that matches no stored token: 403.
    Unknown,
    /// A regular token on an admin route: 403.
    NotAdmin,
}

impl Denied {
    /// The HTTP status this refusal is answered with.
    pub fn status(self) -> StatusCode {
        match self {
            Denied::Missing | Denied::Malformed => StatusCode::UNAUTHORIZED,
            Denied::Unknown | Denied::NotAdmin => StatusCode::FORBIDDEN,
        }
    }

    /// The reason given to the client.
    pub fn reason(self) -> &'static str {
        match self {
            Denied::Missing => "this node requires `Authorization: Bearer <token>`",
            Denied::Malformed => "the Authorization header is not `Bearer <token>`",
            Denied::Unknown => "the bearer token is not valid on this node",
            Denied::NotAdmin => "/cluster/* routes require an admin token",
        }
    }
}

/// A SHA-256 digest of one token.
type Digest = [u8; 32];

fn hash(token: &[u8]) -> Digest {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, token).as_ref());
    out
}

/// Whether `presented` equals any of `stored`, looking at every one of them.
fn any_matches(stored: &[Digest], presented: &Digest) -> bool {
    let found = stored.iter().fold(Choice::from(0u8), |found, digest| {
        found | digest[..].ct_eq(&presented[..])
    });
    bool::from(found)
}

/// The tokens a node accepts (their digests only).
pub struct Tokens {
    regular: Vec<Digest>,
    admin: Vec<Digest>,
    /// Only `--auth-token-file` was given: its tokens may call admin routes too.
    one_role: bool,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("regular", &self.regular.len())
            .field("admin", &self.admin.len())
            .field("one_role", &self.one_role)
            .finish()
    }
}

impl Tokens {
    /// Loads the token files; `None` when neither is given (the API is open).
    pub fn load(auth_file: Option<&Path>, admin_file: Option<&Path>) -> Result<Option<Tokens>> {
        if auth_file.is_none() && admin_file.is_none() {
            return Ok(None);
        }
        let regular = match auth_file {
            Some(path) => read_token_file(path)?,
            None => Vec::new(),
        };
        let admin = match admin_file {
            Some(path) => Some(read_token_file(path)?),
            None => None,
        };
        Ok(Some(Tokens::new(&regular, admin.as_deref())))
    }

    /// Tokens from lists: `admin` `None` makes the regular tokens admin tokens as well.
    pub fn new<S: AsRef<str>>(regular: &[S], admin: Option<&[S]>) -> Tokens {
        let digests = |list: &[S]| -> Vec<Digest> {
            list.iter().map(|t| hash(t.as_ref().as_bytes())).collect()
        };
        Tokens {
            regular: digests(regular),
            admin: admin.map(digests).unwrap_or_default(),
            one_role: admin.is_none(),
        }
    }

    /// True when regular tokens may also call admin routes (no `--admin-token-file`).
    pub fn one_role(&self) -> bool {
        self.one_role
    }

    /// How many regular and admin tokens are stored.
    pub fn counts(&self) -> (usize, usize) {
        (self.regular.len(), self.admin.len())
    }

    /// Admits or refuses a request needing `access` with this `Authorization` header.
    pub fn check(&self, authorization: Option<&HeaderValue>, access: Access) -> Result<(), Denied> {
        let token = bearer_token(authorization)?;
        let presented = hash(token);
        // Both lists are always scanned in full.
        let is_admin = any_matches(&self.admin, &presented);
        let is_regular = any_matches(&self.regular, &presented);
        match (access, is_admin, is_regular) {
            (_, true, _) => Ok(()),
            (Access::Data, false, true) => Ok(()),
            (Access::Admin, false, true) if self.one_role => Ok(()),
            (Access::Admin, false, true) => Err(Denied::NotAdmin),
            (_, false, false) => Err(Denied::Unknown),
        }
    }
}

/// The token of an `Authorization: Bearer <token>` header (scheme case-insensitive).
pub fn bearer_token(authorization: Option<&HeaderValue>) -> Result<&[u8], Denied> {
    let value = authorization.ok_or(Denied::Missing)?.as_bytes();
    let (scheme, rest) = value
        .iter()
        .position(|&b| b == b' ')
        .map(|i| (&value[..i], &value[i + 1..]))
        .ok_or(Denied::Malformed)?;
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return Err(Denied::Malformed);
    }
    let token = rest.trim_ascii();
    if token.is_empty() || !token.iter().all(u8::is_ascii_graphic) {
        return Err(Denied::Malformed);
    }
    Ok(token)
}

/// Reads a token file (refused when group or others may read it) and checks every token.
pub fn read_token_file(path: &Path) -> Result<Vec<String>> {
    let bytes = raft_core::transport::read_private_key(path)
        .with_context(|| format!("reading the token file {}", path.display()))?;
    let text = String::from_utf8(bytes)
        .map_err(|_| anyhow::anyhow!("the token file {} is not UTF-8 text", path.display()))?;
    parse_tokens(&text, path)
}

/// The tokens in a token file's text; `path` names the file in errors.
pub fn parse_tokens(text: &str, path: &Path) -> Result<Vec<String>> {
    let mut tokens = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let at = || format!("{} line {}", path.display(), i + 1);
        if !line.bytes().all(|b| b.is_ascii_graphic()) {
            bail!(
                "{}: a token is visible ASCII characters with no spaces",
                at()
            );
        }
        if line.len() < MIN_TOKEN_LEN {
            bail!(
                "{}: the token is shorter than {MIN_TOKEN_LEN} characters (try `openssl rand -hex 32`)",
                at()
            );
        }
        tokens.push(line.to_string());
    }
    if tokens.is_empty() {
        bail!(
            "the token file {} holds no token (one per line; blank lines and # comments are ignored)",
            path.display()
        );
    }
    Ok(tokens)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    const REGULAR: &str = "regular-token-0123456789";
    const ADMIN: &str = "admin-token-0123456789ab";

    fn header(s: &str) -> HeaderValue {
        HeaderValue::from_str(s).unwrap()
    }

    fn check(tokens: &Tokens, auth: Option<&str>, access: Access) -> Result<(), Denied> {
        let value = auth.map(header);
        tokens.check(value.as_ref(), access)
    }

    #[test]
    fn two_roles() {
        let tokens = Tokens::new(&[REGULAR], Some(&[ADMIN]));
        let bearer = |t: &str| format!("Bearer {t}");
        assert_eq!(check(&tokens, Some(&bearer(REGULAR)), Access::Data), Ok(()));
        assert_eq!(check(&tokens, Some(&bearer(ADMIN)), Access::Data), Ok(()));
        assert_eq!(check(&tokens, Some(&bearer(ADMIN)), Access::Admin), Ok(()));
        assert_eq!(
            check(&tokens, Some(&bearer(REGULAR)), Access::Admin),
            Err(Denied::NotAdmin)
        );
        assert_eq!(
            check(&tokens, Some(&bearer("nope-nope-nope-nope")), Access::Data),
            Err(Denied::Unknown)
        );
        assert_eq!(check(&tokens, None, Access::Data), Err(Denied::Missing));
        for bad in [
            "Basic abc",
            "Bearer",
            "Bearer ",
            "Bearertoken",
            "Bearer a b",
        ] {
            assert_eq!(
                check(&tokens, Some(bad), Access::Data),
                Err(Denied::Malformed),
                "{bad}"
            );
        }
        // The scheme is case-insensitive.
        assert_eq!(
            check(&tokens, Some(&format!("bearer {REGULAR}")), Access::Data),
            Ok(())
        );
        assert_eq!(Denied::Missing.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(Denied::NotAdmin.status(), StatusCode::FORBIDDEN);
    }

    #[test]
    fn one_role_tokens_may_administer() {
        let tokens = Tokens::new(&[REGULAR], None);
        assert!(tokens.one_role());
        let auth = format!("Bearer {REGULAR}");
        assert_eq!(check(&tokens, Some(&auth), Access::Admin), Ok(()));
        assert_eq!(check(&tokens, Some(&auth), Access::Data), Ok(()));
    }

    #[test]
    fn admin_only_file() {
        let none: &[&str] = &[];
        let tokens = Tokens::new(none, Some(&[ADMIN]));
        let auth = format!("Bearer {ADMIN}");
        assert_eq!(check(&tokens, Some(&auth), Access::Data), Ok(()));
        assert_eq!(
            check(
                &tokens,
                Some("Bearer regular-token-0123456789"),
                Access::Data
            ),
            Err(Denied::Unknown)
        );
    }

    #[test]
    fn routes() {
        assert_eq!(Access::of_path("/cluster/leave"), Access::Admin);
        assert_eq!(Access::of_path("/cluster"), Access::Admin);
        assert_eq!(Access::of_path("/clusterx"), Access::Data);
        assert_eq!(Access::of_path("/kv/cluster"), Access::Data);
        assert_eq!(Access::of_path("/status"), Access::Data);
    }

    #[test]
    fn token_files() {
        let path = Path::new("tokens.txt");
        let text = format!("# ops\n\n  {REGULAR}  \r\n#x\n{ADMIN}\n");
        assert_eq!(parse_tokens(&text, path).unwrap(), vec![REGULAR, ADMIN]);
        let err = parse_tokens("# only a comment\n\n", path).unwrap_err();
        assert!(
            format!("{err}").contains("tokens.txt holds no token"),
            "{err}"
        );
        let err = parse_tokens("short-token\n", path).unwrap_err();
        let message = format!("{err}");
        assert!(
            message.contains("tokens.txt line 1") && message.contains("shorter than 16"),
            "{message}"
        );
        assert!(
            !message.contains("short-token"),
            "a token leaked: {message}"
        );
        let err = parse_tokens("a token with spaces in it\n", path).unwrap_err();
        assert!(format!("{err}").contains("line 1"), "{err}");
    }

    #[cfg(unix)]
    #[test]
    fn token_files_readable_by_others_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth.tokens");
        std::fs::write(&path, format!("{REGULAR}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = read_token_file(&path).unwrap_err();
        assert!(format!("{err:#}").contains("auth.tokens"), "{err:#}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_token_file(&path).unwrap(), vec![REGULAR]);
        let tokens = Tokens::load(Some(&path), None).unwrap().unwrap();
        assert_eq!(tokens.counts(), (1, 0));
        assert!(Tokens::load(None, None).unwrap().is_none());
    }
}
