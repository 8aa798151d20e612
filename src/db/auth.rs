//! Connection startup: StartupMessage, authentication (trust, cleartext,
//! MD5, SCRAM-SHA-256), then ParameterStatus / BackendKeyData until the
//! first ReadyForQuery. Runs on the unsplit stream before the connection's
//! reader/writer tasks start.

use std::collections::HashMap;

use bytes::BytesMut;
use fallible_iterator::FallibleIterator;
use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use postgres_protocol::authentication::{md5_hash, sasl};
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;

use super::codec;
use super::config::ConnectConfig;
use super::error::DbError;

/// What the server told us during startup.
#[derive(Debug, Default, Clone)]
pub struct StartupInfo {
    pub parameters: HashMap<String, String>,
    pub process_id: i32,
    pub secret_key: i32,
}

async fn send<S: AsyncWriteRent>(stream: &mut S, buf: BytesMut) -> Result<(), DbError> {
    let (res, _) = stream.write_all(buf).await;
    res?;
    Ok(())
}

/// Read one message, pulling more bytes into `buf` as needed.
pub(crate) async fn read_message<S: AsyncReadRent>(
    stream: &mut S,
    buf: &mut BytesMut,
) -> Result<Message, DbError> {
    loop {
        if let Some(m) = codec::decode(buf)? {
            return Ok(m);
        }
        buf.reserve(8192);
        let len = buf.len();
        let (res, slice) = stream.read(std::mem::take(buf).slice_mut(len..)).await;
        *buf = slice.into_inner();
        match res? {
            0 => {
                return Err(DbError::Closed(
                    "server closed the connection during startup".into(),
                ))
            }
            _ => continue,
        }
    }
}

fn password<'a>(cfg: &'a ConnectConfig, method: &str) -> Result<&'a [u8], DbError> {
    cfg.password.as_deref().map(str::as_bytes).ok_or_else(|| {
        DbError::Auth(format!(
            "server asked for a {method} password but none is configured"
        ))
    })
}

/// Perform startup and authentication; returns once the server is ready.
/// Leftover bytes (none, normally) stay in `buf` for the reader task.
pub(crate) async fn startup<S: AsyncReadRent + AsyncWriteRent>(
    stream: &mut S,
    cfg: &ConnectConfig,
    buf: &mut BytesMut,
) -> Result<StartupInfo, DbError> {
    let mut out = BytesMut::new();
    let mut params: Vec<(&str, &str)> = vec![
        ("user", &cfg.user),
        ("database", &cfg.dbname),
        ("client_encoding", "UTF8"),
    ];
    if let Some(app) = &cfg.application_name {
        params.push(("application_name", app));
    }
    if let Some(opts) = &cfg.options {
        params.push(("options", opts));
    }
    frontend::startup_message(params.iter().copied(), &mut out)?;
    send(stream, out).await?;

    let mut info = StartupInfo::default();
    let mut scram: Option<sasl::ScramSha256> = None;
    loop {
        let msg = read_message(stream, buf).await?;
        let mut out = BytesMut::new();
        match msg {
            Message::AuthenticationOk => {}
            Message::AuthenticationCleartextPassword => {
                frontend::password_message(password(cfg, "cleartext")?, &mut out)?;
                send(stream, out).await?;
            }
            Message::AuthenticationMd5Password(body) => {
                let hash = md5_hash(cfg.user.as_bytes(), password(cfg, "md5")?, body.salt());
                frontend::password_message(hash.as_bytes(), &mut out)?;
                send(stream, out).await?;
            }
            Message::AuthenticationSasl(body) => {
                let mut mechs = body.mechanisms();
                let mut found = false;
                while let Some(m) = mechs.next().map_err(DbError::protocol)? {
                    found |= m == sasl::SCRAM_SHA_256;
                }
                if !found {
                    return Err(DbError::Auth(
                        "server offers no SASL mechanism we support".into(),
                    ));
                }
                // No TLS here, so no channel binding.
                let s = sasl::ScramSha256::new(
                    password(cfg, "SCRAM")?,
                    sasl::ChannelBinding::unsupported(),
                );
                frontend::sasl_initial_response(sasl::SCRAM_SHA_256, s.message(), &mut out)?;
                send(stream, out).await?;
                scram = Some(s);
            }
            Message::AuthenticationSaslContinue(body) => {
                let s = scram
                    .as_mut()
                    .ok_or_else(|| DbError::Protocol("unexpected SASL continue".into()))?;
                s.update(body.data())
                    .map_err(|e| DbError::Auth(e.to_string()))?;
                frontend::sasl_response(s.message(), &mut out)?;
                send(stream, out).await?;
            }
            Message::AuthenticationSaslFinal(body) => {
                let s = scram
                    .as_mut()
                    .ok_or_else(|| DbError::Protocol("unexpected SASL final".into()))?;
                // Verifies the server's signature: a server that does not
                // know the password cannot impersonate the real one.
                s.finish(body.data())
                    .map_err(|e| DbError::Auth(e.to_string()))?;
            }
            Message::AuthenticationKerberosV5
            | Message::AuthenticationScmCredential
            | Message::AuthenticationGss
            | Message::AuthenticationGssContinue(_)
            | Message::AuthenticationSspi => {
                return Err(DbError::Auth(
                    "unsupported authentication method requested".into(),
                ));
            }
            Message::ParameterStatus(body) => {
                let name = body.name().map_err(DbError::protocol)?.to_owned();
                let value = body.value().map_err(DbError::protocol)?.to_owned();
                info.parameters.insert(name, value);
            }
            Message::BackendKeyData(body) => {
                info.process_id = body.process_id();
                info.secret_key = body.secret_key();
            }
            Message::NoticeResponse(body) => {
                super::conn::log_notice(body.fields());
            }
            Message::ErrorResponse(body) => {
                let err = DbError::from_fields(body.fields());
                // 28P01 invalid_password, 28000 invalid_authorization_specification
                return Err(match err.code() {
                    Some(c) if c.starts_with("28") => DbError::Auth(err.to_string()),
                    _ => err,
                });
            }
            Message::ReadyForQuery(_) => return Ok(info),
            _ => {
                return Err(DbError::Protocol(
                    "unexpected message during startup".into(),
                ))
            }
        }
    }
}
