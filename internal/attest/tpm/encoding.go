package tpm

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Evidence blob names (see the package doc).
const (
	BlobEKCert     = "ek-cert"
	BlobAKPublic   = "ak-public"
	BlobActivation = "activation"
	BlobQuote      = "quote"
	BlobSignature  = "signature"
	BlobPCRs       = "pcrs"
	BlobEventLog   = "eventlog"
)

var blobNames = []string{BlobEKCert, BlobAKPublic, BlobActivation, BlobQuote, BlobSignature, BlobPCRs, BlobEventLog}

// Size limits of the identity and the challenge: an EK certificate is 1-2
// KiB, a TPMT_PUBLIC a few hundred bytes, a credential blob and encrypted
// seed at most a few hundred.
const (
	maxCertSize   = 8 << 10
	maxPublicSize = 1 << 10
	maxCredSize   = 1 << 10
	secretSize    = 32
)

// Encodings are a magic that names the message and its version, then
// big-endian uint32-length-prefixed fields, with nothing after the last.
var (
	identityMagic  = []byte("PALTPMI1")
	challengeMagic = []byte("PALTPMC1")
	keptMagic      = []byte("PALTPMK1")
)

func encodeFields(magic []byte, fields ...[]byte) []byte {
	b := append([]byte(nil), magic...)
	for _, f := range fields {
		b = binary.BigEndian.AppendUint32(b, uint32(len(f)))
		b = append(b, f...)
	}
	return b
}

// decodeFields splits an encoding made by encodeFields into len(max) fields,
// field i at most max[i] bytes.
func decodeFields(what string, magic, b []byte, max ...int) ([][]byte, error) {
	if len(b) < len(magic) || string(b[:len(magic)]) != string(magic) {
		return nil, fmt.Errorf("%s: bad magic, want %q", what, magic)
	}
	b = b[len(magic):]
	out := make([][]byte, len(max))
	for i, m := range max {
		if len(b) < 4 {
			return nil, fmt.Errorf("%s: field %d: truncated length", what, i)
		}
		n := binary.BigEndian.Uint32(b)
		b = b[4:]
		if uint64(n) > uint64(m) || int(n) > len(b) {
			return nil, fmt.Errorf("%s: field %d: length %d, at most %d and %d left", what, i, n, m, len(b))
		}
		out[i], b = b[:n], b[n:]
	}
	if len(b) != 0 {
		return nil, fmt.Errorf("%s: %d trailing bytes", what, len(b))
	}
	return out, nil
}

// Identity is what an attester announces: its EK certificate (DER) and its
// AK's TPMT_PUBLIC. Encoded as "PALTPMI1" || u32 len || ek-cert || u32 len ||
// ak-public.
type identity struct {
	ekCert, akPublic []byte
}

func (id identity) encode() []byte { return encodeFields(identityMagic, id.ekCert, id.akPublic) }

func decodeIdentity(b []byte) (identity, error) {
	f, err := decodeFields("identity", identityMagic, b, maxCertSize, maxPublicSize)
	if err != nil {
		return identity{}, err
	}
	if len(f[0]) == 0 || len(f[1]) == 0 {
		return identity{}, errors.New("identity: empty EK certificate or AK public area")
	}
	return identity{f[0], f[1]}, nil
}

// challenge is MakeCredential's output (Part 3 §12.6): the TPM2B_ID_OBJECT
// body and the TPM2B_ENCRYPTED_SECRET body, encoded "PALTPMC1" || u32 len ||
// credential || u32 len || secret.
type challenge struct {
	credential, secret []byte
}

func (c challenge) encode() []byte { return encodeFields(challengeMagic, c.credential, c.secret) }

func decodeChallenge(b []byte) (challenge, error) {
	f, err := decodeFields("challenge", challengeMagic, b, maxCredSize, maxCredSize)
	if err != nil {
		return challenge{}, err
	}
	if len(f[0]) == 0 || len(f[1]) == 0 {
		return challenge{}, errors.New("challenge: empty credential or secret")
	}
	return challenge{f[0], f[1]}, nil
}

// kept is what the verifier keeps between Challenge and Verify: the SHA-256
// of the identity it challenged (binding the EK certificate and the AK, whose
// name the credential was made for) and the credential. Encoded "PALTPMK1"
// || u32 len || digest || u32 len || secret.
type kept struct {
	identityDigest, secret []byte
}

func (k kept) encode() []byte { return encodeFields(keptMagic, k.identityDigest, k.secret) }

func decodeKept(b []byte) (kept, error) {
	f, err := decodeFields("kept", keptMagic, b, 32, secretSize)
	if err != nil {
		return kept{}, err
	}
	if len(f[0]) != 32 || len(f[1]) != secretSize {
		return kept{}, errors.New("kept: wrong field sizes")
	}
	return kept{f[0], f[1]}, nil
}
