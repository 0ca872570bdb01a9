//! Negotiation: stream headers and features, STARTTLS, SASL (PLAIN or SCRAM-SHA-1 via the
//! `sasl` crate), resource binding, and XEP-0198 enable or resume.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use sasl::client::Mechanism;
use sasl::client::mechanisms::{Plain, Scram};
use sasl::common::scram::Sha1;
use sasl::common::{ChannelBinding, Credentials};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::framer::{Framer, Item};
use super::sm::{SmState, is_sm_stanza};
use super::stanza::{Scope, scope_of};
use super::transport::{BoxIo, tls_wrap, trace_on, ts};
use super::{
    Mech, NS_BIND, NS_CLIENT, NS_SASL, NS_SESSION, NS_SM, NS_STREAM, NS_TLS, Opts, Stanza, Tls, esc,
};

/// The connection while negotiating (before the reader task takes over).
pub(super) struct Conn {
    pub(super) io: BoxIo,
    pub(super) framer: Framer,
    pub(super) label: String,
    /// Namespace context of the current stream (from its header).
    pub(super) scope: Scope,
    pub(super) deadline: tokio::time::Instant,
}

impl Conn {
    async fn send(&mut self, s: &str) -> Result<(), String> {
        if trace_on() {
            eprintln!("{:8.3} [{}] >> {s}", ts(), self.label);
        }
        let fut = async {
            self.io.write_all(s.as_bytes()).await?;
            self.io.flush().await
        };
        tokio::time::timeout_at(self.deadline, fut)
            .await
            .map_err(|_| "timeout while writing".to_string())?
            .map_err(|e| format!("write failed: {e}"))
    }

    async fn next_item(&mut self) -> Result<Item, String> {
        let mut buf = [0u8; 8192];
        loop {
            if let Some(item) = self.framer.next()? {
                if trace_on() {
                    eprintln!("{:8.3} [{}] << {item:?}", ts(), self.label);
                }
                return Ok(item);
            }
            let n = tokio::time::timeout_at(self.deadline, self.io.read(&mut buf))
                .await
                .map_err(|_| {
                    format!(
                        "timeout while negotiating; unparsed input: {:?}",
                        self.framer.pending()
                    )
                })?
                .map_err(|e| format!("read failed: {e}"))?;
            if n == 0 {
                return Err(format!(
                    "connection closed while negotiating; unparsed input: {:?}",
                    self.framer.pending()
                ));
            }
            self.framer.push(&buf[..n]);
        }
    }

    /// Next element; a stream error or stream end is an `Err`.
    async fn next_element(&mut self) -> Result<Stanza, String> {
        match self.next_item().await? {
            Item::Element(raw) => {
                let s = Stanza::parse(&raw, &self.scope, 0);
                if s.is_stream_error() {
                    return Err(format!("stream error: {}", s.raw));
                }
                Ok(s)
            }
            Item::Open(a) => Err(format!("unexpected second stream header: {a:?}")),
            Item::Close => Err("peer closed the stream while negotiating".to_string()),
        }
    }

    /// Sends a stream header, reads the peer's and then its features.
    async fn open_stream(
        &mut self,
        domain: &str,
    ) -> Result<(Vec<(String, String)>, Stanza), String> {
        self.framer = Framer::default();
        self.send(&format!(
            "<?xml version='1.0'?><stream:stream xmlns='{NS_CLIENT}' \
             xmlns:stream='{NS_STREAM}' to='{}' version='1.0' xml:lang='en'>",
            esc(domain)
        ))
        .await?;
        let attrs = match self.next_item().await? {
            Item::Open(attrs) => attrs,
            Item::Element(raw) => return Err(format!("expected stream header, got {raw}")),
            Item::Close => return Err("expected stream header, got stream end".to_string()),
        };
        self.scope = scope_of(&attrs);
        let features = self.next_element().await?;
        if features.name != "features" || features.ns != NS_STREAM {
            return Err(format!("expected stream features, got {}", features.raw));
        }
        Ok((attrs, features))
    }
}

pub(super) struct Negotiated {
    pub(super) pre_auth_features: Stanza,
    pub(super) features: Stanza,
    pub(super) stream_attrs: Vec<(String, String)>,
    pub(super) jid: String,
    /// Stanzas received while negotiating (before `<enabled/>`), raw.
    pub(super) early: Vec<String>,
    pub(super) sm: SmState,
}

pub(super) async fn negotiate(
    conn: &mut Conn,
    user: &str,
    pass: &str,
    opts: &Opts,
) -> Result<Negotiated, String> {
    let (_, mut features) = conn.open_stream(&opts.domain).await?;
    if opts.tls == Tls::StartTls {
        if features.child_ns("starttls", NS_TLS).is_none() {
            return Err(format!("STARTTLS not offered: {}", features.raw));
        }
        conn.send(&format!("<starttls xmlns='{NS_TLS}'/>")).await?;
        let reply = conn.next_element().await?;
        if reply.name != "proceed" {
            return Err(format!("STARTTLS refused: {}", reply.raw));
        }
        if !conn.framer.buf.is_empty() {
            return Err(format!(
                "data after <proceed/>: {:?}",
                conn.framer.pending()
            ));
        }
        let io = std::mem::replace(&mut conn.io, Box::new(tokio::io::empty()));
        conn.io = tokio::time::timeout_at(conn.deadline, tls_wrap(io, &opts.domain, false))
            .await
            .map_err(|_| "TLS handshake timed out".to_string())??;
        features = conn.open_stream(&opts.domain).await?.1;
    }
    let pre_auth_features = features.clone();

    // SASL
    let mechs: Vec<String> = features
        .child_ns("mechanisms", NS_SASL)
        .map(|m| {
            m.children_named("mechanism")
                .map(|c| c.text.trim().to_string())
                .collect()
        })
        .unwrap_or_default();
    let name = opts.mech.name();
    if !mechs.iter().any(|m| m == name) {
        return Err(format!(
            "SASL {name} not offered (offered: {mechs:?}): {}",
            features.raw
        ));
    }
    let creds = Credentials::default()
        .with_username(user)
        .with_password(pass)
        .with_channel_binding(ChannelBinding::None);
    let mut mech: Box<dyn Mechanism + Send> = match opts.mech {
        Mech::Plain => Box::new(Plain::from_credentials(creds).map_err(|e| e.to_string())?),
        Mech::ScramSha1 => {
            Box::new(Scram::<Sha1>::from_credentials(creds).map_err(|e| e.to_string())?)
        }
    };
    let initial = mech.initial();
    let initial = if initial.is_empty() {
        "=".to_string()
    } else {
        B64.encode(initial)
    };
    conn.send(&format!(
        "<auth xmlns='{NS_SASL}' mechanism='{name}'>{initial}</auth>"
    ))
    .await?;
    loop {
        let s = conn.next_element().await?;
        let data = B64
            .decode(s.text.trim())
            .map_err(|e| format!("bad base64 in {}: {e}", s.raw))?;
        match s.name.as_str() {
            "challenge" => {
                let resp = mech
                    .response(&data)
                    .map_err(|e| format!("SASL {name}: {e}"))?;
                conn.send(&format!(
                    "<response xmlns='{NS_SASL}'>{}</response>",
                    B64.encode(resp)
                ))
                .await?;
            }
            "success" => {
                mech.success(&data)
                    .map_err(|e| format!("SASL {name} success not verified: {e}"))?;
                break;
            }
            _ => return Err(format!("authentication failed: {}", s.raw)),
        }
    }

    let (stream_attrs, features) = conn.open_stream(&opts.domain).await?;
    let mut sm = SmState::default();
    if let Some(r) = &opts.resume {
        if features.child_ns("sm", NS_SM).is_none() {
            return Err(format!("stream management not offered: {}", features.raw));
        }
        conn.send(&format!(
            "<resume xmlns='{NS_SM}' previd='{}' h='{}'/>",
            esc(&r.previd),
            r.h
        ))
        .await?;
        let reply = conn.next_element().await?;
        if reply.name != "resumed" || reply.ns != NS_SM {
            return Err(format!("resumption failed: {}", reply.raw));
        }
        let h = reply
            .attr("h")
            .and_then(|h| h.parse::<u32>().ok())
            .ok_or_else(|| format!("no valid h in {}", reply.raw))?;
        sm.active = true;
        sm.id = Some(r.previd.clone());
        sm.inbound = r.h;
        sm.outbound = h;
        sm.peer_acked(h);
        sm.resumed = Some(reply);
        return Ok(Negotiated {
            pre_auth_features,
            features,
            stream_attrs,
            jid: r.jid.clone(),
            early: Vec::new(),
            sm,
        });
    }
    if features.child_ns("bind", NS_BIND).is_none() {
        return Err(format!("bind not offered: {}", features.raw));
    }
    conn.send(&format!(
        "<iq type='set' id='bind_1'><bind xmlns='{NS_BIND}'><resource>{}</resource></bind></iq>",
        esc(&opts.resource)
    ))
    .await?;
    let reply = conn.next_element().await?;
    if !reply.is_iq_reply("bind_1") || reply.type_() != Some("result") {
        return Err(format!("bind failed: {}", reply.raw));
    }
    let jid = reply
        .find("jid")
        .map(|j| j.text.trim().to_string())
        .ok_or_else(|| format!("no jid in bind result: {}", reply.raw))?;
    if let Some(sess) = features.child_ns("session", NS_SESSION)
        && sess.child("optional").is_none()
    {
        conn.send(&format!(
            "<iq type='set' id='sess_1'><session xmlns='{NS_SESSION}'/></iq>"
        ))
        .await?;
        let reply = conn.next_element().await?;
        if !reply.is_iq_reply("sess_1") || reply.type_() != Some("result") {
            return Err(format!("session establishment failed: {}", reply.raw));
        }
    }
    let mut early = Vec::new();
    if opts.sm {
        conn.send(&format!("<enable xmlns='{NS_SM}' resume='true'/>"))
            .await?;
        loop {
            let reply = conn.next_element().await?;
            if reply.ns == NS_SM && reply.name == "enabled" {
                sm.active = true;
                sm.id = reply.attr("id").map(str::to_string);
                sm.enabled = Some(reply);
                break;
            }
            if is_sm_stanza(&reply) {
                // Sent before <enabled/>: not counted by either side.
                early.push(reply.raw);
                continue;
            }
            return Err(format!("enabling stream management failed: {}", reply.raw));
        }
    }
    Ok(Negotiated {
        pre_auth_features,
        features,
        stream_attrs,
        jid,
        early,
        sm,
    })
}
