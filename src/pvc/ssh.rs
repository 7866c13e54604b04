//! The SSH layer around the sync protocol (russh). The volume server offers exactly one
//! thing: `exec "drsync serve"` on a session channel, after public-key authentication
//! against its authorized keys — no shell, pty, environment, other command, subsystem or
//! forwarding. The bastion offers only `direct-tcpip` to allow-listed `host:port` targets.
//! The client pins host keys from a `known_hosts` file (never trust on first use, and never
//! a key marked `@revoked`) and can reach the volume server through the bastion (ProxyJump).
//!
//! Keys are checked again at every channel open and `exec` (the authorized list is re-read
//! each time), so a key that expires or is removed loses access on a connection opened
//! before. The volume server bounds its concurrent sessions and the channels per session; a
//! client may only hurt its own sync by opening more.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use russh::keys::{PrivateKey, PrivateKeyWithHashAlg, PublicKey};
use russh::server::{
    Auth, ChannelOpenHandle, Msg, PublicKeyOffer, Server as _, Session, VerifiedPublicKey,
};
use russh::{Channel, ChannelId, ChannelMsg, client, server};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

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

    /// Whether the key a connection authenticated with is still authorized now: checked at
    /// every channel open and request, so an expired or revoked key loses access on an open
    /// connection too. No key (not authenticated) is never allowed.
    fn still_allows(&self, key: Option<&PublicKey>) -> bool {
        key.is_some_and(|k| self.allows(k))
    }
}

/// Concurrent connections the volume server accepts; more are closed at once. One
/// operation's `pvc-sync` needs one; the rest is room for its retries.
pub const MAX_SESSIONS: usize = 4;
/// Channels one volume-server connection may have open at a time (`pvc-sync` uses one).
pub const MAX_CHANNELS_PER_SESSION: usize = 2;
/// Forwardings one bastion connection may have open at a time (`pvc-sync` uses one).
pub const MAX_FORWARDS_PER_SESSION: usize = 4;
/// A connection that has not authenticated within this time is closed, so that peers
/// without a key cannot hold the volume server's few session slots.
pub const AUTH_DEADLINE: Duration = Duration::from_secs(20);
/// How long the bastion tries to reach a forwarding target. A refused forwarding is
/// answered after the same time as a failed one, with the same reason, so the answers do
/// not tell allowed-but-unreachable targets from refused ones.
pub const FORWARD_ANSWER_TIME: Duration = Duration::from_secs(2);

/// Serves the volume at `root` on `listener` until the process ends, with at most
/// [`MAX_SESSIONS`] connections at a time.
pub async fn serve_volume(
    listener: TcpListener,
    root: PathBuf,
    host_key: PrivateKey,
    authorized: KeySource,
) -> Result<(), SshError> {
    let srv = VolumeServer {
        gate: Gate {
            authorized: Arc::new(authorized),
        },
        root: Arc::new(root),
    };
    let config = server_config(host_key);
    let slots = Arc::new(Semaphore::new(MAX_SESSIONS));
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                // Out of descriptors and the like: transient, the server keeps serving.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // Over the limit the connection is closed before the SSH banner: cheapest for us.
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::warn!(?peer, "connection refused: too many sessions");
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        tracing::info!(?peer, "connection");
        let authenticated = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let handler = srv.session(authenticated.clone());
        tokio::spawn(run_session(
            config.clone(),
            tcp,
            handler,
            authenticated,
            permit,
        ));
    }
}

/// Runs one volume-server connection, holding its session slot until it ends; closes it if
/// it has not authenticated within [`AUTH_DEADLINE`] (the SSH banner exchange included).
async fn run_session(
    config: Arc<server::Config>,
    tcp: TcpStream,
    handler: VolumeSession,
    authenticated: Arc<std::sync::atomic::AtomicBool>,
    _permit: OwnedSemaphorePermit,
) {
    let deadline = tokio::time::Instant::now() + AUTH_DEADLINE;
    let session =
        match tokio::time::timeout_at(deadline, server::run_stream(config, tcp, handler)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "connection setup failed");
                return;
            }
            Err(_) => {
                tracing::warn!("connection closed: no SSH handshake in time");
                return;
            }
        };
    let handle = session.handle();
    tokio::pin!(session);
    tokio::select! {
        r = &mut session => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            return;
        }
        _ = tokio::time::sleep_until(deadline) => {}
    }
    if !authenticated.load(std::sync::atomic::Ordering::SeqCst) {
        tracing::warn!("connection closed: not authenticated in time");
        let _ = handle
            .disconnect(
                russh::Disconnect::ByApplication,
                "authentication timeout".into(),
                String::new(),
            )
            .await;
        return;
    }
    if let Err(e) = session.await {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

#[derive(Clone)]
struct VolumeServer {
    gate: Gate,
    root: Arc<PathBuf>,
}

impl VolumeServer {
    fn session(&self, authenticated: Arc<std::sync::atomic::AtomicBool>) -> VolumeSession {
        VolumeSession {
            gate: self.gate.clone(),
            root: self.root.clone(),
            key: None,
            authenticated,
            slots: Arc::new(Semaphore::new(MAX_CHANNELS_PER_SESSION)),
            channels: HashMap::new(),
        }
    }
}

struct VolumeSession {
    gate: Gate,
    root: Arc<PathBuf>,
    /// The key this connection authenticated with, checked again per channel.
    key: Option<PublicKey>,
    /// Set at authentication (the accept loop closes connections that never get there).
    authenticated: Arc<std::sync::atomic::AtomicBool>,
    /// Channel slots of this connection; a permit lives as long as its channel.
    slots: Arc<Semaphore>,
    /// Channels opened but not yet running the sync command.
    channels: HashMap<ChannelId, (Channel<Msg>, OwnedSemaphorePermit)>,
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
        let verdict = self.gate.verdict(key.public_key);
        if matches!(verdict, Auth::Accept) {
            self.key = Some(key.public_key.clone());
            self.authenticated
                .store(true, std::sync::atomic::Ordering::SeqCst);
        }
        Ok(verdict)
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _: &mut Session,
    ) -> Result<(), Self::Error> {
        if !self.gate.still_allows(self.key.as_ref()) {
            tracing::warn!("channel refused: the client key is no longer authorized");
            reply
                .reject(russh::ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        }
        let Ok(permit) = self.slots.clone().try_acquire_owned() else {
            tracing::warn!("channel refused: too many channels on this connection");
            reply
                .reject(russh::ChannelOpenFailure::ResourceShortage)
                .await;
            return Ok(());
        };
        self.channels.insert(channel.id(), (channel, permit));
        reply.accept().await;
        Ok(())
    }

    async fn channel_close(&mut self, id: ChannelId, _: &mut Session) -> Result<(), Self::Error> {
        // A channel closed before its command frees its slot here; a running one frees it
        // when its sync ends.
        self.channels.remove(&id);
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
        if !self.gate.still_allows(self.key.as_ref()) {
            self.channels.remove(&id);
            return refuse(session, id, "exec: the client key is no longer authorized");
        }
        let Some((channel, permit)) = self.channels.remove(&id) else {
            return refuse(session, id, "exec on an unknown channel");
        };
        session.channel_success(id)?;
        let handle = session.handle();
        let root = self.root.clone();
        tokio::spawn(async move {
            let _permit = permit;
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
        slots: Arc::new(Semaphore::new(MAX_FORWARDS_PER_SESSION)),
    };
    srv.run_on_socket(server_config(host_key), &listener)
        .await
        .map_err(|e| SshError::Transport(e.to_string()))
}

#[derive(Clone)]
struct Bastion {
    gate: Gate,
    allow: Arc<AllowSource>,
    /// The key this connection authenticated with: checked again per forwarding, and
    /// allow-list entries can be bound to it (by fingerprint).
    client: Option<PublicKey>,
    /// Forwarding slots of this connection; a permit lives as long as its forwarding.
    slots: Arc<Semaphore>,
}

impl server::Server for Bastion {
    type Handler = Bastion;
    fn new_client(&mut self, _: Option<std::net::SocketAddr>) -> Bastion {
        Bastion {
            slots: Arc::new(Semaphore::new(MAX_FORWARDS_PER_SESSION)),
            ..self.clone()
        }
    }
}

impl Bastion {
    /// Whether this connection may forward to `host:port` now: its key still authorized
    /// (re-read) and an allow-list entry for the target bound to that key or to none.
    /// Anything unparsable or unknown refuses.
    fn may_forward(&self, host: &str, port: u32) -> bool {
        let Some(key) = self.client.as_ref() else {
            return false;
        };
        let Ok(port) = u16::try_from(port) else {
            return false;
        };
        self.gate.allows(key)
            && forward_allowed(
                &self.allow,
                host,
                port,
                Some(&fingerprint(key)),
                jiff::Timestamp::now(),
            )
    }
}

/// Connects to an allowed forwarding target within [`FORWARD_ANSWER_TIME`].
async fn reach(host: &str, port: u16) -> Option<TcpStream> {
    match tokio::time::timeout(FORWARD_ANSWER_TIME, TcpStream::connect((host, port))).await {
        Ok(Ok(tcp)) => Some(tcp),
        Ok(Err(e)) => {
            tracing::warn!(host, port, error = %e, "forward target unreachable");
            None
        }
        Err(_) => {
            tracing::warn!(host, port, "forward target did not answer in time");
            None
        }
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
            self.client = Some(key.public_key.clone());
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
        let asked = Instant::now();
        let allowed = self.may_forward(host, port);
        if !allowed {
            // Logged here only: the client gets the same answer as for a target that
            // cannot be reached (below).
            tracing::warn!(host, port, "forwarding refused: not allowed for this key");
        }
        let permit = self.slots.clone().try_acquire_owned().ok();
        if allowed && permit.is_none() {
            tracing::warn!(
                host,
                port,
                "forwarding refused: too many on this connection"
            );
        }
        let host = host.to_string();
        // The connect (and a refusal's wait) runs beside the session, which keeps serving
        // its other channels meanwhile.
        tokio::spawn(async move {
            let tcp = match (allowed, permit) {
                (true, Some(permit)) => reach(&host, port as u16).await.map(|tcp| (tcp, permit)),
                _ => None,
            };
            match tcp {
                Some((mut tcp, _permit)) => {
                    reply.accept().await;
                    let mut stream = channel.into_stream();
                    let _ = tokio::io::copy_bidirectional(&mut stream, &mut tcp).await;
                }
                None => {
                    // One answer for refused, unreachable and over-the-limit targets, at
                    // the same time after the request.
                    tokio::time::sleep_until((asked + FORWARD_ANSWER_TIME).into()).await;
                    reply
                        .reject(russh::ChannelOpenFailure::AdministrativelyProhibited)
                        .await;
                }
            }
        });
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
