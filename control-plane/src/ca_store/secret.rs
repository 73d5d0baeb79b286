//! CA state in a Kubernetes Secret (`trellis-ca` in the control plane's namespace), with the
//! `cacerts` key names. A Secret declared empty by the Helm chart is filled on first start;
//! concurrent replicas race safely through the API server's resourceVersion checks.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta, PostParams};
use trellis_ca::CaMaterial;

use super::{CA_CERT, CA_KEY, CERT_CHAIN, Created, ROOT_CERT, StoreError};

/// A Secret holding CA material.
#[derive(Clone)]
pub struct SecretStore {
    /// The Secrets API of the control plane's namespace.
    api: Api<Secret>,
    /// The namespace, for messages.
    namespace: String,
    /// The Secret's name.
    name: String,
}

impl std::fmt::Debug for SecretStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.location())
    }
}

impl SecretStore {
    /// The Secret `namespace/name`.
    pub fn new(client: kube::Client, namespace: &str, name: &str) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }
    }

    /// The Secrets API of its namespace (to watch it).
    pub fn api(&self) -> &Api<Secret> {
        &self.api
    }

    /// The Secret's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `Secret <ns>/<name>`, for messages.
    pub fn location(&self) -> String {
        format!("Secret {}/{}", self.namespace, self.name)
    }

    fn err(&self, reason: impl std::fmt::Display) -> StoreError {
        StoreError::Kubernetes {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            reason: reason.to_string(),
        }
    }

    /// Loads the material; `Ok(None)` when the Secret is absent or has no data at all.
    pub async fn load(&self) -> Result<Option<CaMaterial>, StoreError> {
        let Some(secret) = self
            .api
            .get_opt(&self.name)
            .await
            .map_err(|e| self.err(e))?
        else {
            return Ok(None);
        };
        material_from(secret.data.unwrap_or_default(), &self.location())
    }

    /// Stores the material: creates the Secret, or fills the empty one the chart declared.
    pub async fn create(&self, material: &CaMaterial) -> Result<Created, StoreError> {
        let data = data_from(material);
        match self
            .api
            .get_opt(&self.name)
            .await
            .map_err(|e| self.err(e))?
        {
            None => {
                let secret = self.new_secret(data);
                match self.api.create(&PostParams::default(), &secret).await {
                    Ok(_) => Ok(Created::Stored),
                    Err(kube::Error::Api(s)) if s.code == 409 => Ok(Created::AlreadyExists),
                    Err(e) => Err(self.err(e)),
                }
            }
            Some(existing) if existing.data.as_ref().is_some_and(|d| !d.is_empty()) => {
                Ok(Created::AlreadyExists)
            }
            Some(mut existing) => {
                // resourceVersion is kept, so a replica that filled it first makes this a 409.
                existing.data = Some(data);
                match self
                    .api
                    .replace(&self.name, &PostParams::default(), &existing)
                    .await
                {
                    Ok(_) => Ok(Created::Stored),
                    Err(kube::Error::Api(s)) if s.code == 409 => Ok(Created::AlreadyExists),
                    Err(e) => Err(self.err(e)),
                }
            }
        }
    }
}

impl SecretStore {
    /// A new Secret of this store's name and namespace holding `data`.
    fn new_secret(&self, data: BTreeMap<String, ByteString>) -> Secret {
        Secret {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                namespace: Some(self.namespace.clone()),
                ..ObjectMeta::default()
            },
            type_: Some("Opaque".into()),
            data: Some(data),
            ..Secret::default()
        }
    }

    /// Writes `material` into the Secret whatever it holds now: creates it if it was deleted,
    /// replaces its data if it was emptied or changed. A concurrent write (HTTP 409) is an
    /// error; the caller looks again.
    pub async fn restore(&self, material: &CaMaterial) -> Result<(), StoreError> {
        let data = data_from(material);
        match self
            .api
            .get_opt(&self.name)
            .await
            .map_err(|e| self.err(e))?
        {
            None => {
                let secret = self.new_secret(data);
                self.api
                    .create(&PostParams::default(), &secret)
                    .await
                    .map_err(|e| self.err(e))?;
            }
            Some(mut existing) => {
                existing.data = Some(data);
                existing.string_data = None;
                self.api
                    .replace(&self.name, &PostParams::default(), &existing)
                    .await
                    .map_err(|e| self.err(e))?;
            }
        }
        Ok(())
    }
}

fn data_from(m: &CaMaterial) -> BTreeMap<String, ByteString> {
    [
        (CA_CERT, &m.ca_cert_pem),
        (CA_KEY, &m.ca_key_pem),
        (CERT_CHAIN, &m.cert_chain_pem),
        (ROOT_CERT, &m.root_cert_pem),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), ByteString(v.as_bytes().to_vec())))
    .collect()
}

fn material_from(
    mut data: BTreeMap<String, ByteString>,
    location: &str,
) -> Result<Option<CaMaterial>, StoreError> {
    if data.is_empty() {
        return Ok(None);
    }
    let mut take = |name: &'static str| -> Result<String, StoreError> {
        let bytes = data.remove(name).ok_or_else(|| StoreError::Incomplete {
            location: location.to_owned(),
            missing: name,
        })?;
        String::from_utf8(bytes.0).map_err(|_| StoreError::NotText {
            location: location.to_owned(),
            name,
        })
    };
    Ok(Some(CaMaterial {
        ca_cert_pem: take(CA_CERT)?,
        ca_key_pem: take(CA_KEY)?,
        cert_chain_pem: take(CERT_CHAIN)?,
        root_cert_pem: take(ROOT_CERT)?,
    }))
}
