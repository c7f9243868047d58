// Package tpm is the TPM 2.0 platform of Palisade: an attester that quotes PCRs
// with an activated attestation key, and a verifier that judges such quotes.
//
// It is not a TPM library: it speaks to a TPM through go-tpm, trusts nothing in
// the evidence but what chains to pinned EK roots, and keeps no state between
// calls beyond what Challenge tells the caller to keep.
//
// Evidence blobs (attest.Evidence.Blobs):
//
//	ek-cert     the EK certificate, DER, as read from NV (TCG EK Credential Profile §2.2.1.5)
//	ak-public   the AK's TPMT_PUBLIC (TPM 2.0 Part 2 §12.2.4), marshaled without a size prefix
//	activation  the credential ActivateCredential recovered (Part 1 §24)
//	quote       the TPMS_ATTEST that TPM2_Quote signed (Part 2 §10.12.12)
//	signature   the TPMT_SIGNATURE over it (Part 2 §11.3.4)
//	pcrs        the quoted PCR values in selection order, concatenated
//	eventlog    the UEFI event log, crypto-agile format (PC Client PFP §10.2)
//
// Identity, challenge and kept values are a magic ("PALTPMI1", "PALTPMC1",
// "PALTPMK1") followed by big-endian u32-length-prefixed fields: EK
// certificate and AK TPMT_PUBLIC; credential blob and encrypted seed;
// SHA-256 of the identity and the credential secret.
package tpm
