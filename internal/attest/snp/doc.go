// Package snp is the AMD SEV-SNP platform: an Attester that asks the guest's
// firmware for a signed attestation report, and a Verifier that judges one.
//
// It is not a launch-measurement calculator (qemu-tests computes MEASUREMENT)
// and it never trusts a root of trust carried in the evidence: the AMD ARK
// and ASK (or ASVK) of each product are pinned in the Verifier's Roots.
//
// Evidence blobs (attest.Evidence.Blobs):
//
//	report  the raw ATTESTATION_REPORT, exactly 1184 bytes (SEV-SNP ABI
//	        §7.3, Table 23)
//	certs   the certificate table of the extended guest request (GHCB spec
//	        §4.1.8.1, MSG_REPORT_REQ): GUID-indexed DER certificates; only
//	        the VCEK or VLEK entry is used, ARK/ASK entries are ignored.
//	        Optional: without it the VCEK is fetched through the Getter.
package snp
