//! Who is authenticating, read from the client's SASL `<auth/>` (PLAIN and SCRAM-*), so that a
//! stream can only be resumed through the proxy by the user it belongs to. Payloads are never
//! logged: only the user name is kept.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use crate::xml::Element;

/// The user an `<auth/>` authenticates (or asks to be authorized) as: a node or a bare JID.
/// `None` for other mechanisms or a payload that cannot be read.
pub fn auth_user(auth: &Element) -> Option<String> {
    let mechanism = auth.attr("mechanism")?;
    let payload = STANDARD.decode(auth.text().trim()).ok()?;
    let payload = String::from_utf8(payload).ok()?;
    if mechanism == "PLAIN" {
        // authzid NUL authcid NUL password
        let mut parts = payload.split('\0');
        let authzid = parts.next()?;
        let authcid = parts.next()?;
        parts.next()?;
        let user = if authzid.is_empty() { authcid } else { authzid };
        return (!user.is_empty()).then(|| user.to_owned());
    }
    if mechanism.starts_with("SCRAM-") {
        // gs2-header "n,," | "y,," | "p=cb,", optionally with "a=authzid", then "n=user,r=nonce"
        let mut fields = payload.splitn(3, ',');
        let _binding = fields.next()?;
        let authzid = fields.next()?.strip_prefix("a=").map(unescape);
        let bare = fields.next()?;
        let user = bare
            .split(',')
            .find_map(|f| f.strip_prefix("n="))
            .map(unescape)?;
        let user = authzid.filter(|a| !a.is_empty()).unwrap_or(user);
        return (!user.is_empty()).then_some(user);
    }
    None
}

/// SCRAM's saslname escaping: `=2C` is `,` and `=3D` is `=`.
fn unescape(s: &str) -> String {
    s.replace("=2C", ",").replace("=3D", "=")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(mechanism: &str, payload: &[u8]) -> Element {
        Element::new("auth", crate::ns::SASL)
            .with_attr("mechanism", mechanism)
            .with_text(&STANDARD.encode(payload))
    }

    #[test]
    fn plain_and_scram_users() {
        assert_eq!(
            auth_user(&auth("PLAIN", b"\0joe\0secret")).as_deref(),
            Some("joe")
        );
        assert_eq!(
            auth_user(&auth("PLAIN", b"joe@example.org\0admin\0pw")).as_deref(),
            Some("joe@example.org")
        );
        assert_eq!(
            auth_user(&auth("SCRAM-SHA-1", b"n,,n=joe,r=abc")).as_deref(),
            Some("joe")
        );
        assert_eq!(
            auth_user(&auth("SCRAM-SHA-256-PLUS", b"p=tls-exporter,,n=j=2Co,r=x")).as_deref(),
            Some("j,o")
        );
        assert_eq!(
            auth_user(&auth("SCRAM-SHA-1", b"n,a=joe@x,n=admin,r=x")).as_deref(),
            Some("joe@x")
        );
        assert_eq!(auth_user(&auth("EXTERNAL", b"")), None);
        assert_eq!(auth_user(&auth("PLAIN", b"garbage")), None);
    }
}
