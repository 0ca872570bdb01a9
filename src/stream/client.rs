//! The client leg before TLS, on a STARTTLS port: the proxy answers the stream itself, offers
//! only `<starttls><required/></starttls>`, and refuses anything but `<starttls/>`.

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::errors::{Condition, client_stream_header, stream_error};
use super::{ReadError, StreamHeader, read_element};
use crate::ns;
use crate::xml::{Element, Frame, Framer, Limits};

/// A refusal: the stream error the client got (`None`: the client closed, nothing was sent),
/// for the log and the metric.
#[derive(Debug)]
pub struct Refused {
    pub condition: Option<Condition>,
    pub reason: String,
}

/// Runs the pre-TLS exchange; on success the socket is ready for the TLS handshake and the
/// domain from the client's stream header is returned.
pub async fn negotiate_starttls(
    tcp: &mut TcpStream,
    limits: Limits,
    stream_id: &str,
) -> Result<String, Refused> {
    let mut framer = Framer::with_limits(limits);
    let header = match read_element(tcp, &mut framer).await {
        Ok(Frame::StreamHeader(raw)) => raw,
        Ok(_) => {
            return refuse(
                tcp,
                stream_id,
                "",
                Condition::NotWellFormed,
                "expected a stream header",
            )
            .await;
        }
        Err(ReadError::Closed) => {
            return Err(Refused {
                condition: None,
                reason: "client closed before its stream header".into(),
            });
        }
        Err(ReadError::Frame(e)) => {
            return refuse(tcp, stream_id, "", e.condition(), &e.to_string()).await;
        }
    };
    let header =
        match StreamHeader::parse(&header).and_then(|h| h.check_client_namespace().map(|()| h)) {
            Ok(h) => h,
            Err(e) => return refuse(tcp, stream_id, "", e.condition(), &e.to_string()).await,
        };
    let Some(domain) = header.to.clone().filter(|d| !d.is_empty()) else {
        return refuse(
            tcp,
            stream_id,
            "",
            Condition::HostUnknown,
            "the stream header has no 'to'",
        )
        .await;
    };
    let mut answer = client_stream_header(stream_id, &domain).to_vec();
    answer.extend_from_slice(
        format!(
            "<stream:features><starttls xmlns='{}'><required/></starttls></stream:features>",
            ns::TLS
        )
        .as_bytes(),
    );
    write(tcp, &answer).await?;

    let prefixes = header.prefix_refs();
    match read_element(tcp, &mut framer).await {
        Ok(Frame::Element { raw, .. }) => {
            let is_starttls = Element::parse(&raw, ns::CLIENT, &prefixes)
                .is_ok_and(|e| e.name == "starttls" && e.ns == ns::TLS);
            if !is_starttls {
                return refuse_in_stream(
                    tcp,
                    Condition::PolicyViolation,
                    "TLS is required before anything else",
                )
                .await;
            }
        }
        Ok(Frame::StreamEnd(_)) | Err(ReadError::Closed) => {
            return Err(Refused {
                condition: None,
                reason: "client left before STARTTLS".into(),
            });
        }
        Ok(_) => {
            return refuse_in_stream(
                tcp,
                Condition::PolicyViolation,
                "TLS is required before anything else",
            )
            .await;
        }
        Err(ReadError::Frame(e)) => {
            return refuse_in_stream(tcp, e.condition(), &e.to_string()).await;
        }
    }
    // The client must wait for <proceed/> before its TLS ClientHello: bytes already here are a violation.
    if framer.buffered() != 0 {
        return refuse_in_stream(
            tcp,
            Condition::PolicyViolation,
            "data after <starttls/> before <proceed/>",
        )
        .await;
    }
    write(tcp, format!("<proceed xmlns='{}'/>", ns::TLS).as_bytes()).await?;
    Ok(domain)
}

async fn write(tcp: &mut TcpStream, bytes: &[u8]) -> Result<(), Refused> {
    tcp.write_all(bytes).await.map_err(|e| Refused {
        condition: None,
        reason: format!("write: {e}"),
    })
}

async fn refuse<T>(
    tcp: &mut TcpStream,
    id: &str,
    domain: &str,
    condition: Condition,
    reason: &str,
) -> Result<T, Refused> {
    let mut bytes = client_stream_header(id, domain).to_vec();
    bytes.extend_from_slice(&stream_error(condition, reason));
    let _ = tcp.write_all(&bytes).await;
    let _ = tcp.shutdown().await;
    Err(Refused {
        condition: Some(condition),
        reason: reason.to_owned(),
    })
}

async fn refuse_in_stream<T>(
    tcp: &mut TcpStream,
    condition: Condition,
    reason: &str,
) -> Result<T, Refused> {
    let _ = tcp.write_all(&stream_error(condition, reason)).await;
    let _ = tcp.shutdown().await;
    Err(Refused {
        condition: Some(condition),
        reason: reason.to_owned(),
    })
}
