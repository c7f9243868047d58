// Package attestd is the node side of Palisade's join protocol: it detects
// the machine's platform (TPM, SEV-SNP, TDX, or an emulated CVM port),
// fetches and verifies the signed manifest, picks the hardware profile whose
// reference values this machine measures, and joins keyd over mutual
// attested TLS, returning what keyd admitted it with.
//
// It is not a disk tool: the admission, disk keys included, goes back to the
// caller in memory; unlocking LUKS volumes builds on it. Nothing the
// provisioner says (the hints) is trusted: a keyd is sent evidence only after
// its own evidence verified against the manifest signed by the pinned key
// (ARCHITECTURE §4.4, docs/attestd.md).
package attestd
