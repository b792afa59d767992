//! Compiling the file's `domains`: host names, certificates and their keys, client
//! certificate policies (mutual TLS) and base-path mappings to the file's APIs, each checked
//! with its line; and the host and base-path rules the cluster's domains follow too.

use super::*;

impl Compiler<'_> {
    pub(super) fn domains(&mut self, domains: &[DomainDef], apis: &Apis, https: bool) -> (Domains, DomainCertificates) {
        let mut table = Domains::default();
        let mut certificates = DomainCertificates::default();
        for (i, d) in domains.iter().enumerate() {
            let field = format!("domains[{i}]");
            let name = d.name.value.to_ascii_lowercase();
            if !valid_host(&name) {
                self.sink.push(
                    d.name.referenced,
                    format!("{field}.name"),
                    format!("`{}` is not a host name", d.name.value),
                );
                continue;
            }
            match (&d.certificate, &d.key) {
                (Some(c), Some(k)) => match load_certified_key(&self.path(&c.value), &self.path(&k.value)) {
                    Ok(key) => certificates.insert(&name, key),
                    Err(e) => self.sink.push(c.referenced, format!("{field}.certificate"), e),
                },
                (Some(c), None) => {
                    self.sink.push(c.referenced, format!("{field}.key"), "a certificate needs its `key`")
                }
                (None, Some(k)) => {
                    self.sink.push(k.referenced, format!("{field}.certificate"), "a key needs its `certificate`")
                }
                (None, None) if https => self.sink.push(
                    d.name.referenced,
                    format!("{field}.certificate"),
                    "the https listener is on, so every domain needs `certificate` and `key`",
                ),
                (None, None) => {}
            }
            if let Some(mutual) = &d.client_certificates {
                let m = &mutual.value;
                let crl = m.crl_file.as_ref().map(|f| self.path(f));
                match crate::certificates::client_verifier(&self.path(&m.ca_file), crl.as_deref(), m.required) {
                    Ok(verifier) if https => certificates.require_client_certificates(&name, verifier),
                    Ok(_) => self.sink.push(
                        mutual.referenced,
                        format!("{field}.client_certificates"),
                        "client certificates are asked in a TLS handshake: turn on the `https` listener",
                    ),
                    Err(e) => self.sink.push(mutual.referenced, format!("{field}.client_certificates"), e),
                }
            }
            let mut mappings: Vec<BaseMapping> = Vec::new();
            for (j, m) in d.mappings.iter().enumerate() {
                let mfield = format!("{field}.mappings[{j}]");
                let base = match base_path(&m.base_path.value) {
                    Ok(b) => b,
                    Err(e) => {
                        self.sink.push(m.base_path.referenced, format!("{mfield}.base_path"), e);
                        continue;
                    }
                };
                let Some(stages) = apis.get(&m.api.value) else {
                    self.sink.push(
                        m.api.referenced,
                        format!("{mfield}.api"),
                        format!("no API has id `{}`", m.api.value),
                    );
                    continue;
                };
                let Some(stage) = stages.get(&m.stage.value) else {
                    self.sink.push(
                        m.stage.referenced,
                        format!("{mfield}.stage"),
                        format!("API `{}` has no stage `{}`", m.api.value, m.stage.value),
                    );
                    continue;
                };
                if mappings.iter().any(|x| x.base_path == base) {
                    self.sink.push(
                        m.base_path.referenced,
                        format!("{mfield}.base_path"),
                        format!("base path `{}` is mapped twice", m.base_path.value),
                    );
                    continue;
                }
                mappings.push(BaseMapping { base_path: base, stage: stage.clone() });
            }
            mappings.sort_by_key(|m| std::cmp::Reverse(m.base_path.len()));
            if table.insert(name.clone(), mappings).is_some() {
                self.sink.push(
                    d.name.referenced,
                    format!("{field}.name"),
                    format!("domain `{name}` is declared twice"),
                );
            }
        }
        (table, certificates)
    }
}

/// Normalizes a base path (`/`, `/v1`, `/v1/`) to its matching form (`""`, `/v1`).
pub fn base_path(text: &str) -> Result<String, String> {
    let base = text.trim_end_matches('/').to_string();
    if !text.starts_with('/') || base.contains("//") || base.contains(['{', '}', '?', '#', ' ']) {
        return Err(format!("`{text}` is not a base path like `/` or `/v1`"));
    }
    Ok(base)
}

/// A DNS host name, optionally with one leading `*.` label.
pub fn valid_host(name: &str) -> bool {
    let name = name.strip_prefix("*.").unwrap_or(name);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}
