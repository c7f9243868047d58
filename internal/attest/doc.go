// Package attest is Palisade's attestation vocabulary: evidence, claims, the
// binding that report data commits to, reference values per hardware profile,
// the Attester and Verifier interfaces, and the failure classes of a denial.
//
// It holds no I/O and no platform code; the platforms live in attest/tpm,
// attest/snp and attest/tdx, and the transport in internal/atls.
package attest
