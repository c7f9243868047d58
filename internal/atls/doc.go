// Package atls is Palisade's mutual attested TLS: a TLS 1.3 session between
// two ephemeral keys, authenticated by attestation evidence bound to it.
//
// It is not a PKI and not a platform: no CA, no certificate is trusted, and
// the attesters and verifiers of TPM, SEV-SNP and TDX are handed to it in a
// Config (ARCHITECTURE §2 rule 3), never imported.
//
// # Channel binding
//
// Each side presents a fresh self-signed certificate (ECDSA P-256) per
// connection; TLS 1.3's CertificateVerify proves possession of its key, no
// more. What authenticates a peer is its evidence, whose report data commits
// (attest.Binding) to the RFC 8446 §7.5 exporter of this very connection
// (label attest.ExporterLabel, empty context, 32 bytes). The exporter is
// derived from the exporter master secret, which depends on the ECDHE shared
// secret and the full handshake transcript (RFC 8446 §7.1). A relay (a
// "cuckoo" that opens its own session to a genuine peer and forwards the
// peer's evidence) terminates two TLS sessions with two different exporters:
// evidence bound to one does not verify in the other, and the relay cannot
// make both exporters equal without knowing both sessions' ECDHE secrets.
// TLS 1.3 has no renegotiation, so the triple-handshake attacks of TLS 1.2
// exporters do not apply; session tickets are disabled anyway so every
// connection runs a full handshake with fresh key shares.
//
// # Protocol (version 1)
//
// After the TLS handshake (ALPN "palisade-atls/1") the sides exchange
// frames, strictly in this order:
//
//	C→S client-hello     {nonce, claims, platform, identity, verify}
//	S→C server-hello     {nonce, claims, platform, identity, verify, challenge}
//	C→S challenge        {challenge}            for the server's attester
//	S→C server-evidence  {evidence | null}
//	C→S client-evidence  {evidence | null}      only if the server's was accepted
//	S→C verdict          {ok}
//
// A frame is a 6-byte header — version (1 byte, 1), message type (1 byte,
// the numbers above from 1 to 6), payload length (4 bytes, big endian) —
// followed by a JSON object ([]byte fields in standard base64; unknown
// fields, trailing data, unknown versions and types are rejected). Hello,
// challenge and verdict payloads are at most 64 KiB; evidence payloads at
// most Config.MaxMessageSize (default 4 MiB: base64 of about three blobs of
// attest.MaxBlobSize; each blob is bounded again by attest.Evidence.Check).
//
// platform is empty when the sender will not attest itself (Config.Attester
// nil); verify says whether the sender will verify the receiver, who then
// attests (and only then). A side that denies sends verdict {ok: false} in
// place of its next message and closes; the peer learns nothing else.
//
// Server evidence binds attest.Binding{Role: the server's claimed role,
// ClusterID, Exporter, Nonce: the client's nonce, ClaimsDigest: digest of
// the server's hello claims} and answers the client's challenge; client
// evidence binds the client's role and claims, the server's nonce, and
// answers the server's challenge. The verifying side computes the binding
// from its own view of the session, never from the peer's.
//
// The client verifies the server before it sends its own evidence, so a node
// never hands evidence to an unattested or unverified keyd.
package atls
