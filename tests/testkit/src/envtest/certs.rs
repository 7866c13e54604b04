//! Certificates of one control plane: a CA, the apiserver's serving certificate, an admin
//! client certificate (`O=system:masters`) and the ServiceAccount token signing key.

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use kube::config::{
    AuthInfo, Cluster, Context, Kubeconfig, NamedAuthInfo, NamedCluster, NamedContext,
};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};

use super::{Result, io};

/// PEM material of one control plane.
#[derive(Clone)]
pub struct Pki {
    /// CA certificate (trust anchor for clients and the apiserver's client-ca).
    pub ca_pem: String,
    serving_cert: String,
    serving_key: String,
    admin_cert: String,
    admin_key: String,
    sa_key: String,
    sa_pub: String,
}

/// How a kubeconfig authenticates.
pub enum Credentials {
    /// The admin client certificate.
    Cert,
    /// A bearer token.
    Token(String),
}

impl Pki {
    /// Generates fresh keys and certificates (ECDSA P-256).
    pub fn generate() -> Result<Self> {
        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "dr-syncer envtest CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca_params, &ca_key);

        let serving_key = KeyPair::generate()?;
        let mut serving =
            CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])?;
        serving
            .distinguished_name
            .push(DnType::CommonName, "kube-apiserver");
        serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let serving_cert = serving.signed_by(&serving_key, &issuer)?;

        let admin_key = KeyPair::generate()?;
        let mut admin = CertificateParams::new(Vec::<String>::new())?;
        admin
            .distinguished_name
            .push(DnType::CommonName, "envtest-admin");
        admin
            .distinguished_name
            .push(DnType::OrganizationName, "system:masters");
        admin.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let admin_cert = admin.signed_by(&admin_key, &issuer)?;

        let sa_key = KeyPair::generate()?;
        Ok(Pki {
            ca_pem: ca_cert.pem(),
            serving_cert: serving_cert.pem(),
            serving_key: serving_key.serialize_pem(),
            admin_cert: admin_cert.pem(),
            admin_key: admin_key.serialize_pem(),
            sa_key: sa_key.serialize_pem(),
            sa_pub: sa_key.public_key_pem(),
        })
    }

    /// Writes the files the apiserver reads: `ca.crt`, `serving.crt/.key`, `sa.key/.pub`.
    pub fn write(&self, dir: &Path) -> Result<()> {
        for (name, pem) in [
            ("ca.crt", &self.ca_pem),
            ("serving.crt", &self.serving_cert),
            ("serving.key", &self.serving_key),
            ("sa.key", &self.sa_key),
            ("sa.pub", &self.sa_pub),
        ] {
            std::fs::write(dir.join(name), pem).map_err(io(format!("writing {name}")))?;
        }
        Ok(())
    }

    /// A kubeconfig for `server` with everything embedded.
    pub fn kubeconfig(&self, server: &str, user: &str, credentials: Credentials) -> Kubeconfig {
        let b64 = |s: &str| STANDARD.encode(s.as_bytes());
        let auth = match credentials {
            Credentials::Cert => AuthInfo {
                client_certificate_data: Some(b64(&self.admin_cert)),
                client_key_data: Some(b64(&self.admin_key).into()),
                ..Default::default()
            },
            Credentials::Token(token) => AuthInfo {
                token: Some(token.into()),
                ..Default::default()
            },
        };
        Kubeconfig {
            clusters: vec![NamedCluster {
                name: "envtest".into(),
                cluster: Some(Cluster {
                    server: Some(server.into()),
                    certificate_authority_data: Some(b64(&self.ca_pem)),
                    ..Default::default()
                }),
                other: Default::default(),
            }],
            auth_infos: vec![NamedAuthInfo {
                name: user.into(),
                auth_info: Some(auth),
                other: Default::default(),
            }],
            contexts: vec![NamedContext {
                name: "envtest".into(),
                context: Some(Context {
                    cluster: "envtest".into(),
                    user: Some(user.into()),
                    ..Default::default()
                }),
                other: Default::default(),
            }],
            current_context: Some("envtest".into()),
            api_version: Some("v1".into()),
            kind: Some("Config".into()),
            ..Default::default()
        }
    }
}
