//! The SSH layer around the sync protocol (russh). The volume server offers exactly one
//! thing: `exec "drsync serve"` on a session channel, after public-key authentication
//! against its authorized keys — no shell, pty, environment, other command, subsystem or
//! forwarding. The bastion offers only `direct-tcpip` to allow-listed `host:port` targets.
//! The client pins host keys from a `known_hosts` file (never trust on first use) and can
//! reach the volume server through the bastion (ProxyJump).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use russh::keys::{PrivateKey, PrivateKeyWithHashAlg, PublicKey};
use russh::server::{
    Auth, ChannelOpenHandle, Msg, PublicKeyOffer, Server as _, Session, VerifiedPublicKey,
};
use russh::{Channel, ChannelId, ChannelMsg, client, server};
use tokio::net::{TcpListener, TcpStream};

use super::access::{AllowSource, KeySource, fingerprint, forward_allowed, key_allowed};
use crate::gitops::KnownHosts;

/// The only command the volume server runs.
pub const SERVE_COMMAND: &[u8] = b"drsync serve";

/// SSH errors, with what the user should check.
#[derive(Debug, thiserror::Error)]
pub enum SshError {
    /// A key or key file could not be read.
    #[error("{0}: {1}")]
    Key(PathBuf, String),
    /// The server's host key is unknown or changed.
    #[error("{0}")]
    HostKey(String),
    /// Our key was refused.
    #[error("{0}: authentication refused (is the client key in the server's authorized keys?)")]
    Auth(String),
    /// The server refused the sync command or a forwarding.
    #[error("{0}")]
    Refused(String),
    /// Transport failure.
    #[error("ssh: {0}")]
    Transport(String),
}

impl From<russh::Error> for SshError {
    fn from(e: russh::Error) -> Self {
        SshError::Transport(e.to_string())
    }
}

/// Loads an OpenSSH private key (unencrypted).
pub fn load_key(path: &Path) -> Result<PrivateKey, SshError> {
    russh::keys::load_secret_key(path, None)
        .map_err(|e| SshError::Key(path.to_path_buf(), e.to_string()))
}

/// AES-256-GCM first: with AES-NI it is several times faster than ChaCha20-Poly1305,
/// which russh prefers by default; bulk volume data is what this link carries.
fn preferred() -> russh::Preferred {
    russh::Preferred {
        cipher: std::borrow::Cow::Borrowed(&[
            russh::cipher::AES_256_GCM,
            russh::cipher::CHACHA20_POLY1305,
        ]),
        ..russh::Preferred::DEFAULT
    }
}

fn server_config(host_key: PrivateKey) -> Arc<server::Config> {
    Arc::new(server::Config {
        preferred: preferred(),
        keys: vec![host_key],
        methods: russh::MethodSet::from(&[russh::MethodKind::PublicKey][..]),
        auth_rejection_time: Duration::from_millis(300),
        auth_rejection_time_initial: Some(Duration::ZERO),
        inactivity_timeout: Some(Duration::from_secs(600)),
        keepalive_interval: Some(Duration::from_secs(30)),
        window_size: 32 << 20,
        nodelay: true,
        ..Default::default()
    })
}

fn client_config() -> Arc<client::Config> {
    Arc::new(client::Config {
        preferred: preferred(),
        window_size: 32 << 20,
        nodelay: true,
        keepalive_interval: Some(Duration::from_secs(30)),
        inactivity_timeout: Some(Duration::from_secs(600)),
        ..Default::default()
    })
}

/// What the volume server and the bastion share: who may log in.
#[derive(Clone)]
struct Gate {
    authorized: Arc<KeySource>,
}

impl Gate {
    fn allows(&self, key: &PublicKey) -> bool {
        key_allowed(&self.authorized, key, jiff::Timestamp::now())
    }

    /// Accepts authorized keys; everything else is rejected (russh answers in constant
    /// time).
    fn verdict(&self, key: &PublicKey) -> Auth {
        if self.allows(key) {
            Auth::Accept
        } else {
            Auth::reject()
        }
    }
}

/// Serves the volume at `root` on `listener` until the process ends.
pub async fn serve_volume(
    listener: TcpListener,
    root: PathBuf,
    host_key: PrivateKey,
    authorized: KeySource,
) -> Result<(), SshError> {
    let mut srv = VolumeServer {
        gate: Gate {
            authorized: Arc::new(authorized),
        },
        root: Arc::new(root),
    };
    srv.run_on_socket(server_config(host_key), &listener)
        .await
        .map_err(|e| SshError::Transport(e.to_string()))
}

#[derive(Clone)]
struct VolumeServer {
    gate: Gate,
    root: Arc<PathBuf>,
}

impl server::Server for VolumeServer {
    type Handler = VolumeSession;
    fn new_client(&mut self, peer: Option<std::net::SocketAddr>) -> VolumeSession {
        tracing::info!(?peer, "connection");
        VolumeSession {
            gate: self.gate.clone(),
            root: self.root.clone(),
            channels: HashMap::new(),
        }
    }
}

struct VolumeSession {
    gate: Gate,
    root: Arc<PathBuf>,
    channels: HashMap<ChannelId, Channel<Msg>>,
}

/// Refuses a channel request and closes the channel: anything but the sync command.
fn refuse(session: &mut Session, channel: ChannelId, what: &str) -> Result<(), russh::Error> {
    tracing::warn!(what, "refused");
    session.channel_failure(channel)?;
    session.close(channel)
}

impl server::Handler for VolumeSession {
    type Error = russh::Error;

    async fn auth_publickey_offered(
        &mut self,
        _user: &str,
        offer: PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(self.gate.verdict(offer.public_key))
    }

    async fn auth_publickey(
        &mut self,
        _user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(self.gate.verdict(key.public_key))
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _: &mut Session,
    ) -> Result<(), Self::Error> {
        self.channels.insert(channel.id(), channel);
        reply.accept().await;
        Ok(())
    }

    async fn exec_request(
        &mut self,
        id: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if data != SERVE_COMMAND {
            return refuse(session, id, "command");
        }
        let Some(channel) = self.channels.remove(&id) else {
            return refuse(session, id, "exec on an unknown channel");
        };
        session.channel_success(id)?;
        let handle = session.handle();
        let root = self.root.clone();
        tokio::spawn(async move {
            let code = match super::sender::serve(&root, channel.into_stream()).await {
                Ok(()) => 0,
                Err(e) => {
                    tracing::warn!(error = %e, "sync session failed");
                    1
                }
            };
            let _ = handle.exit_status_request(id, code).await;
            let _ = handle.eof(id).await;
            let _ = handle.close(id).await;
        });
        Ok(())
    }

    async fn shell_request(
        &mut self,
        id: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        refuse(session, id, "shell")
    }

    async fn pty_request(
        &mut self,
        id: ChannelId,
        _: &str,
        _: u32,
        _: u32,
        _: u32,
        _: u32,
        _: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        refuse(session, id, "pty")
    }

    async fn env_request(
        &mut self,
        id: ChannelId,
        _: &str,
        _: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        // Refused without closing: OpenSSH clients send LANG before their command.
        session.channel_failure(id)
    }

    async fn subsystem_request(
        &mut self,
        id: ChannelId,
        _: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        refuse(session, id, "subsystem")
    }

    async fn x11_request(
        &mut self,
        id: ChannelId,
        _: bool,
        _: &str,
        _: &str,
        _: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        refuse(session, id, "x11")
    }

    async fn agent_request(
        &mut self,
        id: ChannelId,
        session: &mut Session,
    ) -> Result<bool, Self::Error> {
        session.channel_failure(id)?;
        Ok(false)
    }
}

/// Runs the bastion: `direct-tcpip` to the `allow`ed `host:port` targets only.
pub async fn bastion(
    listener: TcpListener,
    host_key: PrivateKey,
    authorized: KeySource,
    allow: AllowSource,
) -> Result<(), SshError> {
    let mut srv = Bastion {
        gate: Gate {
            authorized: Arc::new(authorized),
        },
        allow: Arc::new(allow),
        client: None,
    };
    srv.run_on_socket(server_config(host_key), &listener)
        .await
        .map_err(|e| SshError::Transport(e.to_string()))
}

#[derive(Clone)]
struct Bastion {
    gate: Gate,
    allow: Arc<AllowSource>,
    /// Fingerprint of the key this connection authenticated with: allow-list entries can
    /// be bound to one client key.
    client: Option<String>,
}

impl server::Server for Bastion {
    type Handler = Bastion;
    fn new_client(&mut self, _: Option<std::net::SocketAddr>) -> Bastion {
        self.clone()
    }
}

impl server::Handler for Bastion {
    type Error = russh::Error;

    async fn auth_publickey_offered(
        &mut self,
        _user: &str,
        offer: PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(self.gate.verdict(offer.public_key))
    }

    async fn auth_publickey(
        &mut self,
        _user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        let verdict = self.gate.verdict(key.public_key);
        if matches!(verdict, Auth::Accept) {
            self.client = Some(fingerprint(key.public_key));
        }
        Ok(verdict)
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host: &str,
        port: u32,
        _: &str,
        _: u32,
        reply: ChannelOpenHandle,
        _: &mut Session,
    ) -> Result<(), Self::Error> {
        let allowed = u16::try_from(port).is_ok_and(|p| {
            forward_allowed(
                &self.allow,
                host,
                p,
                self.client.as_deref(),
                jiff::Timestamp::now(),
            )
        });
        if !allowed {
            tracing::warn!(host, port, "forwarding refused: not allow-listed");
            reply
                .reject(russh::ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        }
        match TcpStream::connect((host, port as u16)).await {
            Ok(mut tcp) => {
                reply.accept().await;
                tokio::spawn(async move {
                    let mut stream = channel.into_stream();
                    let _ = tokio::io::copy_bidirectional(&mut stream, &mut tcp).await;
                });
            }
            Err(e) => {
                tracing::warn!(host, port, error = %e, "forward target unreachable");
                reply.reject(russh::ChannelOpenFailure::ConnectFailed).await;
            }
        }
        Ok(())
    }
}

/// `ssh://[user@]host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshUrl {
    /// Host name or address.
    pub host: String,
    /// Port.
    pub port: u16,
    /// User name (ignored by dr-syncer's servers; kept for OpenSSH-style URLs).
    pub user: String,
}

impl std::str::FromStr for SshUrl {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let rest = s
            .strip_prefix("ssh://")
            .ok_or_else(|| format!("{s}: expected ssh://HOST:PORT"))?;
        let (user, hostport) = match rest.split_once('@') {
            Some((u, h)) => (u.to_string(), h),
            None => ("drsync".to_string(), rest),
        };
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) => (
                h.trim_matches(['[', ']']).to_string(),
                p.parse().map_err(|_| format!("{s}: bad port"))?,
            ),
            None => (hostport.to_string(), 22),
        };
        if host.is_empty() {
            return Err(format!("{s}: no host"));
        }
        Ok(SshUrl { host, port, user })
    }
}

struct Pinned {
    known: Arc<KnownHosts>,
    host: String,
    port: u16,
    failure: Arc<std::sync::Mutex<Option<String>>>,
}

impl client::Handler for Pinned {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let russh::keys::PublicKeyOrCertificate::PublicKey { key, .. } = key else {
            *self.failure.lock().expect("not poisoned") =
                Some(format!("{}: host certificates are not accepted", self.host));
            return Ok(false);
        };
        let blob = key
            .to_bytes()
            .map_err(|e| russh::Error::from(russh::keys::Error::from(e)))?;
        match self.known.check(&self.host, self.port, &blob) {
            Ok(()) => Ok(true),
            Err(e) => {
                *self.failure.lock().expect("not poisoned") = Some(e.to_string());
                Ok(false)
            }
        }
    }
}

/// A connected sync stream and the SSH sessions it runs over (kept alive with it).
pub struct Connection {
    /// The `drsync serve` channel.
    pub stream: russh::ChannelStream<client::Msg>,
    _sessions: Vec<client::Handle<Pinned>>,
}

async fn handshake<S>(
    stream: Option<S>,
    url: &SshUrl,
    known: &Arc<KnownHosts>,
    key: &Arc<PrivateKey>,
) -> Result<client::Handle<Pinned>, SshError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let failure = Arc::new(std::sync::Mutex::new(None));
    let handler = Pinned {
        known: known.clone(),
        host: url.host.clone(),
        port: url.port,
        failure: failure.clone(),
    };
    let connected = match stream {
        Some(s) => client::connect_stream(client_config(), s, handler).await,
        None => client::connect(client_config(), (url.host.as_str(), url.port), handler).await,
    };
    let mut handle = match connected {
        Ok(h) => h,
        Err(e) => {
            return Err(match failure.lock().expect("not poisoned").take() {
                Some(f) => SshError::HostKey(f),
                None => SshError::Transport(format!("{}:{}: {e}", url.host, url.port)),
            });
        }
    };
    let auth = handle
        .authenticate_publickey(&url.user, PrivateKeyWithHashAlg::new(key.clone(), None))
        .await?;
    if !auth.success() {
        return Err(SshError::Auth(format!("{}:{}", url.host, url.port)));
    }
    Ok(handle)
}

/// Connects to the volume server at `to` (through `jump` when given) and starts the sync
/// command.
pub async fn connect(
    to: &SshUrl,
    key: PrivateKey,
    known: KnownHosts,
    jump: Option<&SshUrl>,
) -> Result<Connection, SshError> {
    let known = Arc::new(known);
    let key = Arc::new(key);
    let mut sessions = Vec::new();
    let target = match jump {
        Some(j) => {
            let bastion = handshake::<TcpStream>(None, j, &known, &key).await?;
            let ch = bastion
                .channel_open_direct_tcpip(to.host.clone(), u32::from(to.port), "127.0.0.1", 0)
                .await
                .map_err(|e| {
                    SshError::Refused(format!(
                        "bastion {}:{} refused forwarding to {}:{}: {e}",
                        j.host, j.port, to.host, to.port
                    ))
                })?;
            let inner = handshake(Some(ch.into_stream()), to, &known, &key).await?;
            sessions.push(bastion);
            inner
        }
        None => handshake::<TcpStream>(None, to, &known, &key).await?,
    };
    let mut channel = target.channel_open_session().await?;
    channel.exec(true, SERVE_COMMAND).await?;
    loop {
        match channel.wait().await {
            Some(ChannelMsg::Success) => break,
            Some(ChannelMsg::Failure) | Some(ChannelMsg::Close) | None => {
                return Err(SshError::Refused(format!(
                    "{}:{} refused the sync command",
                    to.host, to.port
                )));
            }
            Some(_) => {}
        }
    }
    sessions.push(target);
    Ok(Connection {
        stream: channel.into_stream(),
        _sessions: sessions,
    })
}
