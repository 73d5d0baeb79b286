//! Interoperability with the real `openssl` binary: what we issue, OpenSSL accepts and
//! reads back with the properties docs/design.md ("Identity") requires; CA material that OpenSSL
//! makes (Istio `cacerts` layout) loads or is refused for the right reason; and certificates
//! OpenSSL makes with a wrong property are refused by `verify_svid` with the right error.
//!
//! Every test works in its own `TempDir`, removed on drop even when the test fails.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls_pki_types::{CertificateDer, UnixTime};
use tempfile::TempDir;
use trellis_ca::{
    CaLoadError, CaMaterial, CertificateAuthority, IssuedSvid, PeerRole, SpiffeId, SpiffeIdError,
    TrustBundle, TrustDomain, ValidatedCsr, VerifyError, WorkloadKey, certs_from_pem, der_to_pem,
    verify_svid,
};

const FRONTEND: &str = "spiffe://cluster.local/ns/shop/sa/frontend";
const HOUR: Duration = Duration::from_secs(3600);

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A scratch directory in which `openssl` runs, with relative file names.
struct Workdir {
    /// Removed, with everything in it, when the test ends.
    dir: TempDir,
}

impl Workdir {
    fn new() -> Self {
        Self {
            dir: TempDir::new().expect("create a temporary directory"),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn write(&self, name: &str, contents: impl AsRef<[u8]>) {
        std::fs::write(self.path(name), contents).expect("write a file in the temporary directory");
    }

    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(name)).expect("read a file openssl wrote")
    }

    /// Runs `openssl args...` in the directory and returns its output, whatever the status.
    fn try_openssl(&self, args: &[&str]) -> Output {
        Command::new("openssl")
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .expect("the openssl binary must be installed to run these tests")
    }

    /// Runs `openssl args...`, fails the test if it fails, and returns its stdout.
    fn openssl(&self, args: &[&str]) -> String {
        let out = self.try_openssl(args);
        assert!(
            out.status.success(),
            "openssl {} failed:\nstdout: {}\nstderr: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("openssl prints UTF-8")
    }

    /// A new PKCS#8 private key: `ec` (P-256) or `rsa` (2048 bits).
    fn genkey(&self, name: &str, kind: KeyKind) {
        let params: &[&str] = match kind {
            KeyKind::P256 => &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
            KeyKind::Rsa2048 => &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
        };
        let mut args = vec!["genpkey", "-out", name];
        args.extend_from_slice(params);
        self.openssl(&args);
    }

    /// A CSR `<name>.csr` for the key `<name>-key.pem`, subject `subject`.
    fn req(&self, name: &str, subject: &str) {
        let key = format!("{name}-key.pem");
        let csr = format!("{name}.csr");
        self.openssl(&["req", "-new", "-key", &key, "-subj", subject, "-out", &csr]);
    }

    /// Signs `<name>.csr` with `issuer` (`<issuer>-cert.pem`, `<issuer>-key.pem`), or with its
    /// own key when `issuer` is `None`, adding exactly the extensions given (one per line, in
    /// openssl config syntax). Writes `<name>-cert.pem`.
    fn sign(&self, name: &str, issuer: Option<&str>, days: u32, extensions: &str) {
        let ext_file = format!("{name}.ext");
        self.write(&ext_file, format!("[ext]\n{extensions}\n"));
        let csr = format!("{name}.csr");
        let out = format!("{name}-cert.pem");
        let days = days.to_string();
        let serial = format!("0x{}", random_hex(16));
        let mut args = vec![
            "x509",
            "-req",
            "-in",
            &csr,
            "-out",
            &out,
            "-days",
            &days,
            "-sha256",
            "-set_serial",
            &serial,
            "-extfile",
            &ext_file,
            "-extensions",
            "ext",
        ];
        let (issuer_cert, issuer_key, own_key);
        match issuer {
            Some(issuer) => {
                issuer_cert = format!("{issuer}-cert.pem");
                issuer_key = format!("{issuer}-key.pem");
                args.extend_from_slice(&["-CA", &issuer_cert, "-CAkey", &issuer_key]);
            }
            None => {
                own_key = format!("{name}-key.pem");
                args.extend_from_slice(&["-key", &own_key]);
            }
        }
        self.openssl(&args);
    }

    /// Like [`Workdir::sign`] with an issuer, but with an explicit validity window given as
    /// `YYYYMMDDHHMMSSZ`, which `openssl x509` cannot do; uses `openssl ca`.
    fn sign_with_dates(&self, name: &str, issuer: &str, start: &str, end: &str, extensions: &str) {
        self.write(
            "ca.cnf",
            "[ca]\ndefault_ca = d\n[d]\ndatabase = index.txt\nnew_certs_dir = .\n\
             rand_serial = yes\ndefault_md = sha256\npolicy = p\nunique_subject = no\n\
             copy_extensions = none\nemail_in_dn = no\n\
             [p]\norganizationName = optional\ncommonName = optional\n",
        );
        self.write("index.txt", "");
        let ext_file = format!("{name}.ext");
        self.write(&ext_file, format!("[ext]\n{extensions}\n"));
        let (csr, out) = (format!("{name}.csr"), format!("{name}-cert.pem"));
        let (cert, key) = (format!("{issuer}-cert.pem"), format!("{issuer}-key.pem"));
        self.openssl(&[
            "ca",
            "-batch",
            "-config",
            "ca.cnf",
            "-notext",
            "-in",
            &csr,
            "-out",
            &out,
            "-cert",
            &cert,
            "-keyfile",
            &key,
            "-startdate",
            start,
            "-enddate",
            end,
            "-extfile",
            &ext_file,
            "-extensions",
            "ext",
        ]);
    }

    /// A key, CSR and certificate `<name>-{key,cert}.pem` in one go.
    fn make_cert(
        &self,
        name: &str,
        kind: KeyKind,
        issuer: Option<&str>,
        subject: &str,
        extensions: &str,
    ) {
        self.genkey(&format!("{name}-key.pem"), kind);
        self.req(name, subject);
        self.sign(name, issuer, 365, extensions);
    }

    /// The DER of the single certificate in `name`.
    fn cert_der(&self, name: &str) -> CertificateDer<'static> {
        let mut certs = certs_from_pem(self.read(name).as_bytes()).expect("openssl wrote PEM");
        assert_eq!(certs.len(), 1, "{name} holds one certificate");
        certs.remove(0)
    }

    /// Writes `material` as Istio's `cacerts` files, plus the signing pair as `ours-*.pem`
    /// so that `sign` can use our CA as issuer.
    fn write_material(&self, material: &CaMaterial) {
        self.write("ca-cert.pem", &material.ca_cert_pem);
        self.write("ca-key.pem", &material.ca_key_pem);
        self.write("cert-chain.pem", &material.cert_chain_pem);
        self.write("root-cert.pem", &material.root_cert_pem);
        self.write("ours-cert.pem", &material.ca_cert_pem);
        self.write("ours-key.pem", &material.ca_key_pem);
    }

    /// Reads the `cacerts` files back into a [`CaMaterial`].
    fn read_material(&self) -> CaMaterial {
        CaMaterial {
            ca_cert_pem: self.read("ca-cert.pem"),
            ca_key_pem: self.read("ca-key.pem"),
            cert_chain_pem: self.read("cert-chain.pem"),
            root_cert_pem: self.read("root-cert.pem"),
        }
    }

    /// Writes an issued SVID as `leaf.pem` and `chain.pem` (its intermediates).
    fn write_svid(&self, svid: &IssuedSvid) {
        self.write("leaf.pem", der_to_pem(&svid.leaf));
        let chain: String = svid.chain.iter().map(|c| der_to_pem(c)).collect();
        self.write("chain.pem", chain);
    }
}

#[derive(Debug, Clone, Copy)]
enum KeyKind {
    P256,
    Rsa2048,
}

fn random_hex(bytes: usize) -> String {
    use ring::rand::SecureRandom;
    let mut buf = vec![0u8; bytes];
    ring::rand::SystemRandom::new()
        .fill(&mut buf)
        .expect("system random number generator");
    buf[0] &= 0x7f; // a positive serial
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).expect("test IDs are valid")
}

fn td() -> TrustDomain {
    TrustDomain::default()
}

/// The current time, truncated to whole seconds as X.509 times are, so that comparisons
/// with what OpenSSL prints are exact.
fn now() -> SystemTime {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    UNIX_EPOCH + Duration::from_secs(secs)
}

fn unix(t: SystemTime) -> UnixTime {
    UnixTime::since_unix_epoch(t.duration_since(UNIX_EPOCH).expect("clock after 1970"))
}

fn root_ca(now: SystemTime) -> (CaMaterial, CertificateAuthority) {
    let material = CaMaterial::generate_root(&td(), now).expect("generate a root");
    let ca = CertificateAuthority::load(td(), &material, now).expect("load the fresh root");
    (material, ca)
}

/// Issues an SVID for `identity` over a fresh workload key.
fn issue(ca: &CertificateAuthority, identity: &str, ttl: Duration, now: SystemTime) -> IssuedSvid {
    let key = WorkloadKey::generate().expect("generate a workload key");
    let identity = id(identity);
    let csr =
        ValidatedCsr::parse(&key.csr(&identity).expect("build a CSR")).expect("parse the CSR");
    ca.issue(&csr, &identity, ttl, now).expect("issue an SVID")
}

/// `openssl verify` must succeed and print `<leaf>: OK`.
fn assert_openssl_verifies(w: &Workdir, args: &[&str]) {
    let mut all = vec!["verify"];
    all.extend_from_slice(args);
    let out = w.openssl(&all);
    assert!(
        out.trim_end().ends_with(": OK"),
        "openssl verify said: {out}"
    );
}

/// `openssl verify` must fail.
fn assert_openssl_refuses(w: &Workdir, args: &[&str]) -> String {
    let mut all = vec!["verify"];
    all.extend_from_slice(args);
    let out = w.try_openssl(&all);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "openssl verify accepted it: {text}");
    text
}

// ---- reading `openssl x509 -text` ----

/// The trimmed lines of an `openssl x509 -text` dump.
fn lines(text: &str) -> Vec<&str> {
    text.lines().map(str::trim).collect()
}

/// Every value printed after `label` (e.g. `"Not Before:"`) at the start of a line.
fn fields<'a>(text: &'a str, label: &str) -> Vec<&'a str> {
    lines(text)
        .into_iter()
        .filter_map(|l| l.strip_prefix(label))
        .map(str::trim)
        .collect()
}

/// The value printed after `label`; exactly one such line must exist.
fn field<'a>(text: &'a str, label: &str) -> &'a str {
    let found = fields(text, label);
    assert_eq!(found.len(), 1, "expected one {label:?} line in:\n{text}");
    found[0]
}

/// An X.509v3 extension as OpenSSL prints it: whether it is critical, and its body (the more
/// indented lines under its header). Fails the test if the extension appears other than once.
fn extension(text: &str, name: &str) -> (bool, String) {
    let all: Vec<&str> = text.lines().collect();
    let header = format!("{name}:");
    let at: Vec<usize> = (0..all.len())
        .filter(|&i| all[i].trim_start().starts_with(&header))
        .collect();
    assert_eq!(
        at.len(),
        1,
        "expected extension {name:?} exactly once in:\n{text}"
    );
    let i = at[0];
    let indent = |l: &str| l.len() - l.trim_start().len();
    let critical = all[i].trim_end().ends_with("critical");
    let body: Vec<&str> = all[i + 1..]
        .iter()
        .take_while(|l| indent(l) > indent(all[i]))
        .map(|l| l.trim())
        .collect();
    (critical, body.join("\n"))
}

/// Parses OpenSSL's `Nov  3 04:05:06 2025 GMT`.
fn openssl_time(s: &str) -> SystemTime {
    let parts: Vec<&str> = s.split_whitespace().collect();
    assert_eq!(parts.len(), 5, "unexpected time {s:?}");
    assert_eq!(parts[4], "GMT", "unexpected time {s:?}");
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .iter()
    .position(|m| *m == parts[0])
    .expect("month name") as u8
        + 1;
    let month = time::Month::try_from(month).expect("month number");
    let day: u8 = parts[1].parse().expect("day");
    let year: i32 = parts[3].parse().expect("year");
    let hms: Vec<u8> = parts[2]
        .split(':')
        .map(|x| x.parse().expect("h:m:s"))
        .collect();
    let date = time::Date::from_calendar_date(year, month, day).expect("a date");
    let t = date
        .with_hms(hms[0], hms[1], hms[2])
        .expect("a time")
        .assume_utc();
    UNIX_EPOCH + Duration::from_secs(u64::try_from(t.unix_timestamp()).expect("after 1970"))
}

fn x509_text(w: &Workdir, file: &str) -> String {
    w.openssl(&["x509", "-in", file, "-noout", "-text"])
}

// ---------------------------------------------------------------------------------------------
// Our root, our leaves
// ---------------------------------------------------------------------------------------------

#[test]
fn issued_svid_passes_openssl_verify() {
    let w = Workdir::new();
    let now = now();
    let (material, ca) = root_ca(now);
    let svid = issue(&ca, FRONTEND, HOUR, now);
    assert!(svid.chain.is_empty(), "a root CA sends no intermediates");
    w.write("root.pem", &material.root_cert_pem);
    w.write_svid(&svid);
    assert_openssl_verifies(&w, &["-CAfile", "root.pem", "leaf.pem"]);
    // Usable as both ends of mTLS, and conformant under OpenSSL's strict RFC 5280 checks
    // (which include "an empty subject needs a critical subjectAltName").
    for purpose in ["sslserver", "sslclient"] {
        assert_openssl_verifies(
            &w,
            &[
                "-x509_strict",
                "-purpose",
                purpose,
                "-CAfile",
                "root.pem",
                "leaf.pem",
            ],
        );
    }
}

#[test]
fn generated_root_is_a_ten_year_self_signed_ca_that_openssl_accepts() {
    let w = Workdir::new();
    let now = now();
    let (material, _) = root_ca(now);
    w.write("root.pem", &material.root_cert_pem);
    assert_openssl_verifies(&w, &["-x509_strict", "-CAfile", "root.pem", "root.pem"]);
    let text = x509_text(&w, "root.pem");
    assert_eq!(
        extension(&text, "X509v3 Basic Constraints"),
        (true, "CA:TRUE".into())
    );
    let (critical, usage) = extension(&text, "X509v3 Key Usage");
    assert!(critical, "{text}");
    assert!(usage.contains("Certificate Sign"), "{usage}");
    assert_eq!(field(&text, "Subject:"), field(&text, "Issuer:"));
    let not_after = openssl_time(field(&text, "Not After :"));
    assert_eq!(not_after, now + Duration::from_secs(10 * 365 * 24 * 3600));
}

#[test]
fn issued_svid_has_exactly_the_properties_design_md_requires() {
    let w = Workdir::new();
    let now = now();
    let ttl = Duration::from_secs(6 * 3600);
    let (material, ca) = root_ca(now);
    let svid = issue(&ca, FRONTEND, ttl, now);
    w.write("root.pem", &material.root_cert_pem);
    w.write_svid(&svid);
    let text = x509_text(&w, "leaf.pem");

    assert_eq!(field(&text, "Version:"), "3 (0x2)");
    // Printed twice: in the signed part and for the outer signature.
    assert_eq!(
        fields(&text, "Signature Algorithm:"),
        ["ecdsa-with-SHA256", "ecdsa-with-SHA256"]
    );
    let root_text = x509_text(&w, "root.pem");
    assert_eq!(field(&text, "Issuer:"), field(&root_text, "Subject:"));
    assert_eq!(
        field(&text, "Subject:"),
        "",
        "workload certificates have an empty subject"
    );

    // Exactly one URI SAN, the SPIFFE ID, and nothing else in the SAN; critical because the
    // subject is empty (RFC 5280 4.2.1.6).
    let (san_critical, san) = extension(&text, "X509v3 Subject Alternative Name");
    assert_eq!(san, format!("URI:{FRONTEND}"));
    assert!(san_critical, "SAN must be critical with an empty subject");

    let (_, basic) = extension(&text, "X509v3 Basic Constraints");
    assert_eq!(basic, "CA:FALSE");

    assert_eq!(
        extension(&text, "X509v3 Key Usage"),
        (true, "Digital Signature".to_owned())
    );
    let (_, eku) = extension(&text, "X509v3 Extended Key Usage");
    assert_eq!(
        eku,
        "TLS Web Server Authentication, TLS Web Client Authentication"
    );

    // The issuer's key identifier is named, so OpenSSL can build the path.
    let (_, aki) = extension(&text, "X509v3 Authority Key Identifier");
    let (_, root_ski) = extension(&root_text, "X509v3 Subject Key Identifier");
    assert!(
        aki.contains(&root_ski),
        "AKI {aki:?} does not name the root's SKI {root_ski:?}"
    );

    // ECDSA P-256.
    assert_eq!(field(&text, "Public Key Algorithm:"), "id-ecPublicKey");
    assert_eq!(field(&text, "Public-Key:"), "(256 bit)");
    assert_eq!(field(&text, "ASN1 OID:"), "prime256v1");
    assert_eq!(field(&text, "NIST CURVE:"), "P-256");

    // Validity: not-before back-dated by five minutes, not-after exactly now + ttl.
    let not_before = openssl_time(field(&text, "Not Before:"));
    let not_after = openssl_time(field(&text, "Not After :"));
    assert_eq!(not_before, now - Duration::from_secs(300));
    assert_eq!(not_after, now + ttl);
    assert_eq!((svid.not_before, svid.not_after), (not_before, not_after));

    // A 16-byte serial number, the one reported for audit logs.
    let serial_line = lines(&text)
        .windows(2)
        .find(|pair| pair[0] == "Serial Number:")
        .map(|pair| pair[1])
        .unwrap_or_else(|| panic!("a long serial number on its own line in:\n{text}"));
    let serial_bytes: Vec<&str> = serial_line.split(':').collect();
    assert_eq!(serial_bytes.len(), 16, "serial {serial_line}");
    assert_eq!(serial_bytes.concat(), svid.serial);
}

#[test]
fn svid_never_outlives_its_issuer() {
    let w = Workdir::new();
    let now = now();
    // An intermediate that expires in two hours signs a leaf asked for six.
    w.make_cert("root", KeyKind::P256, None, "/O=Plug-in/CN=Root", ROOT_EXT);
    w.genkey("ca-key.pem", KeyKind::P256);
    w.req("ca", "/O=Plug-in/CN=Short intermediate");
    let end = openssl_date(now + 2 * HOUR);
    let start = openssl_date(now - HOUR);
    w.sign_with_dates("ca", "root", &start, &end, INTERMEDIATE_EXT);
    w.write("cert-chain.pem", w.read("ca-cert.pem"));
    let ca = CertificateAuthority::load(td(), &w.read_material(), now).unwrap();
    assert_eq!(ca.issuer_not_after(), now + 2 * HOUR);
    let svid = issue(&ca, FRONTEND, 6 * HOUR, now);
    assert_eq!(svid.not_after, now + 2 * HOUR);
    w.write_svid(&svid);
    let text = x509_text(&w, "leaf.pem");
    assert_eq!(openssl_time(field(&text, "Not After :")), now + 2 * HOUR);
}

#[test]
fn issuing_before_the_issuer_is_valid_is_refused_rather_than_inverting_the_validity() {
    let now = now();
    let (_, ca) = root_ca(now);
    let key = WorkloadKey::generate().unwrap();
    let csr = ValidatedCsr::parse(&key.csr(&id(FRONTEND)).unwrap()).unwrap();
    // The root is valid from now - 5 min; a 1 s certificate asked for two hours earlier
    // would end before it began.
    let then = now - 2 * HOUR;
    let err = ca
        .issue(&csr, &id(FRONTEND), Duration::from_secs(1), then)
        .unwrap_err();
    let secs = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap().as_secs();
    match err {
        trellis_ca::IssueError::IssuerNotYetValid {
            issuer_not_before,
            now: at,
        } => {
            assert_eq!(issuer_not_before, secs(now - Duration::from_secs(300)));
            assert_eq!(at, secs(then));
        }
        other => panic!("expected IssuerNotYetValid, got {other:?}"),
    }
    // Slightly early but overlapping the issuer's validity is fine: the leaf starts with it.
    let svid = ca
        .issue(&csr, &id(FRONTEND), HOUR, now - Duration::from_secs(600))
        .unwrap();
    assert_eq!(svid.not_before, now - Duration::from_secs(300));
    assert!(svid.not_after > svid.not_before);
}

#[test]
fn openssl_made_csrs_with_p256_and_rsa_2048_keys_get_verifiable_svids() {
    let w = Workdir::new();
    let now = now();
    let (material, ca) = root_ca(now);
    w.write("root.pem", &material.root_cert_pem);
    for (kind, key_line) in [
        (KeyKind::P256, "ASN1 OID: prime256v1"),
        (KeyKind::Rsa2048, "Public-Key: (2048 bit)"),
    ] {
        w.genkey("w-key.pem", kind);
        w.openssl(&[
            "req",
            "-new",
            "-key",
            "w-key.pem",
            "-subj",
            "/CN=ignored",
            "-addext",
            &format!("subjectAltName=URI:{FRONTEND}"),
            "-out",
            "w.csr",
        ]);
        let csr = ValidatedCsr::parse(w.read("w.csr").as_bytes()).unwrap();
        let svid = ca.issue(&csr, &id(FRONTEND), HOUR, now).unwrap();
        w.write_svid(&svid);
        assert_openssl_verifies(
            &w,
            &["-purpose", "sslclient", "-CAfile", "root.pem", "leaf.pem"],
        );
        let text = x509_text(&w, "leaf.pem");
        assert!(lines(&text).contains(&key_line), "{kind:?}: {text}");
        // The certificate certifies the CSR's key, not some other one.
        let leaf_key = w.openssl(&["x509", "-in", "leaf.pem", "-noout", "-pubkey"]);
        let csr_key = w.openssl(&["pkey", "-in", "w-key.pem", "-pubout"]);
        assert_eq!(leaf_key, csr_key, "{kind:?}");
        // The CSR's subject is not copied.
        assert_eq!(field(&text, "Subject:"), "");
    }
}

// ---------------------------------------------------------------------------------------------
// Plug-in intermediate (Istio `cacerts`)
// ---------------------------------------------------------------------------------------------

const ROOT_EXT: &str = "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\nsubjectKeyIdentifier=hash";
const INTERMEDIATE_EXT: &str = "basicConstraints=critical,CA:TRUE,pathlen:0\n\
     keyUsage=critical,keyCertSign,cRLSign,digitalSignature\n\
     subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid:always\n\
     subjectAltName=URI:spiffe://cluster.local";
const LEAF_EXT: &str = "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n\
     extendedKeyUsage=serverAuth,clientAuth\nsubjectKeyIdentifier=hash\n\
     authorityKeyIdentifier=keyid";

/// Writes `root-{key,cert}.pem` and an intermediate `ca-{key,cert}.pem` signed by it, plus
/// `cert-chain.pem` (intermediate then root) and `root-cert.pem`: Istio's `cacerts`.
fn make_cacerts(w: &Workdir, kind: KeyKind) {
    w.make_cert(
        "root",
        kind,
        None,
        "/O=Plug-in/CN=Plug-in Root CA",
        ROOT_EXT,
    );
    w.make_cert(
        "ca",
        kind,
        Some("root"),
        "/O=Plug-in/CN=Plug-in Intermediate CA",
        INTERMEDIATE_EXT,
    );
    w.write(
        "cert-chain.pem",
        w.read("ca-cert.pem") + &w.read("root-cert.pem"),
    );
}

fn plug_in_intermediate_issues_svids_that_openssl_verifies(kind: KeyKind) {
    let w = Workdir::new();
    make_cacerts(&w, kind);
    // After the files are made: `openssl x509` does not back-date notBefore.
    let now = now();
    let ca = CertificateAuthority::load(td(), &w.read_material(), now)
        .expect("openssl-made cacerts load");
    let svid = issue(&ca, FRONTEND, HOUR, now);
    // The chain holds the intermediate only: the root is in every peer's bundle already.
    assert_eq!(svid.chain, vec![w.cert_der("ca-cert.pem")], "{kind:?}");
    assert_eq!(ca.bundle().roots(), &[w.cert_der("root-cert.pem")][..]);
    w.write_svid(&svid);
    for purpose in ["sslserver", "sslclient"] {
        assert_openssl_verifies(
            &w,
            &[
                "-x509_strict",
                "-purpose",
                purpose,
                "-CAfile",
                "root-cert.pem",
                "-untrusted",
                "chain.pem",
                "leaf.pem",
            ],
        );
    }
    // Without the intermediate the leaf does not reach the root.
    let refusal = assert_openssl_refuses(&w, &["-CAfile", "root-cert.pem", "leaf.pem"]);
    assert!(
        refusal.contains("unable to get local issuer certificate"),
        "{refusal}"
    );
    // Our own verifier agrees on both counts.
    let verified = verify_svid(
        ca.bundle(),
        &svid.leaf,
        &svid.chain,
        unix(now),
        PeerRole::Server,
    )
    .expect("our verifier accepts the leaf with its chain");
    assert_eq!(verified.id, id(FRONTEND));
    assert!(matches!(
        verify_svid(ca.bundle(), &svid.leaf, &[], unix(now), PeerRole::Server),
        Err(VerifyError::UnknownIssuer { .. })
    ));
    // `IssuedSvid::chain_pem` is what a workload writes as `svid.pem`: leaf, then chain.
    w.write("svid.pem", svid.chain_pem());
    let in_svid_pem = certs_from_pem(w.read("svid.pem").as_bytes()).expect("svid.pem is PEM");
    assert_eq!(
        in_svid_pem,
        [vec![svid.leaf.clone()], svid.chain.clone()].concat()
    );
    assert_openssl_verifies(
        &w,
        &[
            "-CAfile",
            "root-cert.pem",
            "-untrusted",
            "svid.pem",
            "leaf.pem",
        ],
    );
}

#[test]
fn plug_in_p256_intermediate_issues_svids_that_openssl_verifies_with_the_chain() {
    plug_in_intermediate_issues_svids_that_openssl_verifies(KeyKind::P256);
}

#[test]
fn plug_in_rsa_2048_intermediate_issues_svids_that_openssl_verifies_with_the_chain() {
    plug_in_intermediate_issues_svids_that_openssl_verifies(KeyKind::Rsa2048);
}

#[test]
fn cert_chain_without_the_root_also_loads() {
    let w = Workdir::new();
    make_cacerts(&w, KeyKind::P256);
    w.write("cert-chain.pem", w.read("ca-cert.pem"));
    let ca = CertificateAuthority::load(td(), &w.read_material(), now()).unwrap();
    let svid = issue(&ca, FRONTEND, HOUR, now());
    assert_eq!(svid.chain, vec![w.cert_der("ca-cert.pem")]);
}

#[test]
fn ca_key_that_does_not_match_ca_cert_is_a_key_mismatch() {
    let w = Workdir::new();
    make_cacerts(&w, KeyKind::P256);
    w.genkey("ca-key.pem", KeyKind::P256); // replaces the intermediate's key
    let err = CertificateAuthority::load(td(), &w.read_material(), now()).unwrap_err();
    assert!(matches!(err, CaLoadError::KeyMismatch), "{err:?}");
}

#[test]
fn ca_key_of_the_root_with_the_intermediate_cert_is_a_key_mismatch() {
    let w = Workdir::new();
    make_cacerts(&w, KeyKind::P256);
    w.write("ca-key.pem", w.read("root-key.pem"));
    let err = CertificateAuthority::load(td(), &w.read_material(), now()).unwrap_err();
    assert!(matches!(err, CaLoadError::KeyMismatch), "{err:?}");
}

#[test]
fn ca_cert_that_is_not_a_ca_is_refused_as_not_ca() {
    let w = Workdir::new();
    make_cacerts(&w, KeyKind::P256);
    // A workload certificate (CA:FALSE) with its own key, signed by the root.
    w.make_cert(
        "ca",
        KeyKind::P256,
        Some("root"),
        "/O=Plug-in/CN=Not a CA",
        LEAF_EXT,
    );
    let err = CertificateAuthority::load(td(), &w.read_material(), now()).unwrap_err();
    match err {
        CaLoadError::NotCa { subject } => assert!(subject.contains("Not a CA"), "{subject}"),
        other => panic!("expected NotCa, got {other:?}"),
    }
}

#[test]
fn intermediate_from_another_root_does_not_chain() {
    let w = Workdir::new();
    make_cacerts(&w, KeyKind::P256);
    // root-cert.pem is replaced by an unrelated root with the same subject name.
    w.make_cert(
        "root",
        KeyKind::P256,
        None,
        "/O=Plug-in/CN=Plug-in Root CA",
        ROOT_EXT,
    );
    let err = CertificateAuthority::load(td(), &w.read_material(), now()).unwrap_err();
    assert!(matches!(err, CaLoadError::DoesNotChain(_)), "{err:?}");
    assert_openssl_refuses(&w, &["-CAfile", "root-cert.pem", "ca-cert.pem"]);
}

#[test]
fn expired_ca_cert_is_outside_validity() {
    let w = Workdir::new();
    make_cacerts(&w, KeyKind::P256);
    w.sign_with_dates(
        "ca",
        "root",
        "20200101000000Z",
        "20210101000000Z",
        INTERMEDIATE_EXT,
    );
    let now = now();
    let err = CertificateAuthority::load(td(), &w.read_material(), now).unwrap_err();
    match err {
        CaLoadError::OutsideValidity {
            not_before,
            not_after,
            now: at,
        } => {
            assert_eq!(not_before, 1_577_836_800); // 2020-01-01T00:00:00Z
            assert_eq!(not_after, 1_609_459_200); // 2021-01-01T00:00:00Z
            assert_eq!(at, unix(now).as_secs() as i64);
        }
        other => panic!("expected OutsideValidity, got {other:?}"),
    }
}

#[test]
fn ca_cert_not_valid_yet_is_outside_validity() {
    let w = Workdir::new();
    make_cacerts(&w, KeyKind::P256);
    w.sign_with_dates(
        "ca",
        "root",
        "20990101000000Z",
        "21000101000000Z",
        INTERMEDIATE_EXT,
    );
    let err = CertificateAuthority::load(td(), &w.read_material(), now()).unwrap_err();
    assert!(
        matches!(err, CaLoadError::OutsideValidity { .. }),
        "{err:?}"
    );
}

#[test]
fn pkcs1_and_sec1_keys_are_refused_as_bad_keys_not_panics() {
    // *ring* reads PKCS#8 only; Istio's sample `ca-key.pem` is PKCS#1. Refusing it is fine,
    // but it must be a clear `BadKey`.
    let w = Workdir::new();
    make_cacerts(&w, KeyKind::Rsa2048);
    w.openssl(&[
        "pkey",
        "-in",
        "ca-key.pem",
        "-traditional",
        "-out",
        "pkcs1.pem",
    ]);
    assert!(
        w.read("pkcs1.pem")
            .starts_with("-----BEGIN RSA PRIVATE KEY-----")
    );
    w.write("ca-key.pem", w.read("pkcs1.pem"));
    let err = CertificateAuthority::load(td(), &w.read_material(), now()).unwrap_err();
    assert!(matches!(err, CaLoadError::BadKey(_)), "{err:?}");

    let w = Workdir::new();
    make_cacerts(&w, KeyKind::P256);
    w.openssl(&[
        "pkey",
        "-in",
        "ca-key.pem",
        "-traditional",
        "-out",
        "sec1.pem",
    ]);
    assert!(
        w.read("sec1.pem")
            .starts_with("-----BEGIN EC PRIVATE KEY-----")
    );
    w.write("ca-key.pem", w.read("sec1.pem"));
    let err = CertificateAuthority::load(td(), &w.read_material(), now()).unwrap_err();
    assert!(matches!(err, CaLoadError::BadKey(_)), "{err:?}");
}

// ---------------------------------------------------------------------------------------------
// Leaves made by OpenSSL with one wrong property: refused with the right reason
// ---------------------------------------------------------------------------------------------

/// Our root on disk as `ours-{cert,key}.pem`, and its bundle.
fn our_root_on_disk(w: &Workdir) -> TrustBundle {
    let (material, ca) = root_ca(now());
    w.write_material(&material);
    ca.bundle().clone()
}

/// A P-256 leaf signed by `issuer` (or self-signed) with `extensions`; returns its DER.
fn openssl_leaf(w: &Workdir, issuer: Option<&str>, extensions: &str) -> CertificateDer<'static> {
    w.make_cert("leaf", KeyKind::P256, issuer, "/O=Trellis test", extensions);
    w.cert_der("leaf-cert.pem")
}

fn leaf_ext(san: &str, eku: &str, basic: &str) -> String {
    let mut ext = format!("basicConstraints=critical,{basic}\nkeyUsage=critical,digitalSignature");
    if !eku.is_empty() {
        ext += &format!("\nextendedKeyUsage={eku}");
    }
    if !san.is_empty() {
        ext += &format!("\nsubjectAltName={san}");
    }
    ext
}

fn verify(
    bundle: &TrustBundle,
    leaf: &CertificateDer<'_>,
    role: PeerRole,
) -> Result<SpiffeId, VerifyError> {
    verify_svid(bundle, leaf, &[], unix(SystemTime::now()), role).map(|v| v.id)
}

#[test]
fn openssl_leaf_with_every_svid_property_is_accepted() {
    // The control case: without it the refusals below could all come from one unrelated flaw.
    let w = Workdir::new();
    let bundle = our_root_on_disk(&w);
    let ext = leaf_ext(
        &format!("URI:{FRONTEND}"),
        "serverAuth,clientAuth",
        "CA:FALSE",
    );
    let leaf = openssl_leaf(&w, Some("ours"), &ext);
    assert_eq!(verify(&bundle, &leaf, PeerRole::Client), Ok(id(FRONTEND)));
    assert_eq!(verify(&bundle, &leaf, PeerRole::Server), Ok(id(FRONTEND)));
}

#[test]
fn openssl_leaf_with_two_uri_sans_is_refused() {
    let w = Workdir::new();
    let bundle = our_root_on_disk(&w);
    let san = format!("URI:{FRONTEND},URI:spiffe://cluster.local/ns/shop/sa/admin");
    let leaf = openssl_leaf(
        &w,
        Some("ours"),
        &leaf_ext(&san, "serverAuth,clientAuth", "CA:FALSE"),
    );
    assert_eq!(
        verify(&bundle, &leaf, PeerRole::Client),
        Err(VerifyError::SeveralUriSans(2))
    );
}

#[test]
fn openssl_leaf_that_is_a_ca_is_refused() {
    let w = Workdir::new();
    let bundle = our_root_on_disk(&w);
    let ext = leaf_ext(
        &format!("URI:{FRONTEND}"),
        "serverAuth,clientAuth",
        "CA:TRUE",
    );
    let leaf = openssl_leaf(&w, Some("ours"), &ext);
    assert_eq!(
        verify(&bundle, &leaf, PeerRole::Client),
        Err(VerifyError::LeafIsCa)
    );
}

#[test]
fn expired_openssl_leaf_is_refused_as_expired() {
    let w = Workdir::new();
    let bundle = our_root_on_disk(&w);
    w.genkey("leaf-key.pem", KeyKind::P256);
    w.req("leaf", "/O=Trellis test");
    // Inside our root's validity (back-dated five minutes), but long over.
    let start = openssl_date(SystemTime::now() - Duration::from_secs(240));
    let end = openssl_date(SystemTime::now() - Duration::from_secs(120));
    let ext = leaf_ext(
        &format!("URI:{FRONTEND}"),
        "serverAuth,clientAuth",
        "CA:FALSE",
    );
    w.sign_with_dates("leaf", "ours", &start, &end, &ext);
    let leaf = w.cert_der("leaf-cert.pem");
    let not_after = openssl_time(field(&x509_text(&w, "leaf-cert.pem"), "Not After :"));
    let want = not_after.duration_since(UNIX_EPOCH).unwrap().as_secs();
    assert_eq!(
        verify(&bundle, &leaf, PeerRole::Client),
        Err(VerifyError::Expired { not_after: want })
    );
}

#[test]
fn openssl_leaf_of_another_trust_domain_is_refused() {
    let w = Workdir::new();
    let bundle = our_root_on_disk(&w);
    let other = "spiffe://other.example/ns/shop/sa/frontend";
    let leaf = openssl_leaf(
        &w,
        Some("ours"),
        &leaf_ext(&format!("URI:{other}"), "serverAuth,clientAuth", "CA:FALSE"),
    );
    assert_eq!(
        verify(&bundle, &leaf, PeerRole::Client),
        Err(VerifyError::TrustDomainMismatch {
            id: id(other),
            expected: td(),
        })
    );
}

#[test]
fn self_signed_openssl_leaf_is_an_unknown_issuer() {
    let w = Workdir::new();
    let bundle = our_root_on_disk(&w);
    let ext = leaf_ext(
        &format!("URI:{FRONTEND}"),
        "serverAuth,clientAuth",
        "CA:FALSE",
    );
    let leaf = openssl_leaf(&w, None, &ext);
    assert_eq!(
        verify(&bundle, &leaf, PeerRole::Client),
        Err(VerifyError::UnknownIssuer { trust_domain: td() })
    );
}

#[test]
fn openssl_leaf_without_uri_san_has_no_spiffe_id() {
    let w = Workdir::new();
    let bundle = our_root_on_disk(&w);
    for san in ["DNS:frontend.shop.svc", ""] {
        let leaf = openssl_leaf(
            &w,
            Some("ours"),
            &leaf_ext(san, "serverAuth,clientAuth", "CA:FALSE"),
        );
        assert_eq!(
            verify(&bundle, &leaf, PeerRole::Client),
            Err(VerifyError::NoSpiffeId),
            "SAN {san:?}"
        );
    }
}

#[test]
fn openssl_leaf_with_a_non_spiffe_uri_is_refused() {
    let w = Workdir::new();
    let bundle = our_root_on_disk(&w);
    let ext = leaf_ext(
        "URI:https://frontend.shop.svc",
        "serverAuth,clientAuth",
        "CA:FALSE",
    );
    let leaf = openssl_leaf(&w, Some("ours"), &ext);
    assert_eq!(
        verify(&bundle, &leaf, PeerRole::Client),
        Err(VerifyError::NotSpiffe(SpiffeIdError::WrongScheme(
            "https://frontend.shop.svc".into()
        )))
    );
}

#[test]
fn openssl_leaf_without_client_auth_is_refused_as_a_client_but_accepted_as_a_server() {
    let w = Workdir::new();
    let bundle = our_root_on_disk(&w);
    let leaf = openssl_leaf(
        &w,
        Some("ours"),
        &leaf_ext(&format!("URI:{FRONTEND}"), "serverAuth", "CA:FALSE"),
    );
    assert_eq!(
        verify(&bundle, &leaf, PeerRole::Client),
        Err(VerifyError::MissingEku("clientAuth"))
    );
    assert_eq!(verify(&bundle, &leaf, PeerRole::Server), Ok(id(FRONTEND)));
}

#[test]
fn openssl_leaf_without_server_auth_is_refused_as_a_server() {
    let w = Workdir::new();
    let bundle = our_root_on_disk(&w);
    let leaf = openssl_leaf(
        &w,
        Some("ours"),
        &leaf_ext(&format!("URI:{FRONTEND}"), "clientAuth", "CA:FALSE"),
    );
    assert_eq!(
        verify(&bundle, &leaf, PeerRole::Server),
        Err(VerifyError::MissingEku("serverAuth"))
    );
}

// ---------------------------------------------------------------------------------------------
// Trust bundles with several roots (rotation)
// ---------------------------------------------------------------------------------------------

#[test]
fn bundle_with_two_roots_accepts_svids_of_either_until_one_is_removed() {
    let w = Workdir::new();
    let now = now();
    let (old_material, old_ca) = root_ca(now);
    let (new_material, new_ca) = root_ca(now);
    let old_root = certs_from_pem(old_material.root_cert_pem.as_bytes()).unwrap();
    let new_root = certs_from_pem(new_material.root_cert_pem.as_bytes()).unwrap();
    let from_old = issue(&old_ca, FRONTEND, HOUR, now);
    let from_new = issue(&new_ca, FRONTEND, HOUR, now);

    // Rotation: the new CA hands out both roots.
    let new_ca = new_ca.with_extra_roots(&old_root).unwrap();
    let both = new_ca.bundle().clone();
    assert_eq!(both.roots().len(), 2);
    for svid in [&from_old, &from_new] {
        let verified = verify_svid(&both, &svid.leaf, &svid.chain, unix(now), PeerRole::Client);
        assert_eq!(verified.map(|v| v.id), Ok(id(FRONTEND)));
    }
    // OpenSSL agrees with the bundle file workloads get.
    w.write("bundle.pem", both.to_pem());
    for (name, svid) in [("old.pem", &from_old), ("new.pem", &from_new)] {
        w.write(name, der_to_pem(&svid.leaf));
        assert_openssl_verifies(&w, &["-CAfile", "bundle.pem", name]);
    }

    // The old root retired: its SVIDs stop verifying, the new ones do not.
    let only_new = TrustBundle::new(td(), new_root).unwrap();
    let refused = verify_svid(
        &only_new,
        &from_old.leaf,
        &from_old.chain,
        unix(now),
        PeerRole::Client,
    );
    // Every generated root of a trust domain has the same subject, so webpki finds the new
    // root by name, tries its key, and reports the failed signature (its most specific
    // error) rather than `UnknownIssuer`. Either way the old SVID is refused.
    assert!(
        matches!(
            refused,
            Err(VerifyError::BadSignature | VerifyError::UnknownIssuer { .. })
        ),
        "{refused:?}"
    );
    assert!(verify_svid(&only_new, &from_new.leaf, &[], unix(now), PeerRole::Client).is_ok());
    w.write("bundle.pem", only_new.to_pem());
    assert_openssl_refuses(&w, &["-CAfile", "bundle.pem", "old.pem"]);
    assert_openssl_verifies(&w, &["-CAfile", "bundle.pem", "new.pem"]);
}

/// Formats a time as `YYYYMMDDHHMMSSZ` for `openssl ca -startdate/-enddate`.
fn openssl_date(t: SystemTime) -> String {
    let t = time::OffsetDateTime::from(t);
    format!(
        "{:04}{:02}{:02}{:02}{:02}{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}
