package tpm

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/google/go-tpm/tpm2"

	"github.com/palisade-cc/palisade/internal/attest"
)

// akUnique makes Palisade's AK a key of its own: a primary key is derived
// from the hierarchy seed and the template (Part 1 §27.8), so the same TPM
// always yields the same AK, distinct from other software's.
var akUnique = sha256.Sum256([]byte("palisade.attest.tpm.ak.v1"))

// akTemplate is the AK: an ECDSA P-256 restricted signing key whose private
// part never leaves the TPM (fixedTPM, fixedParent, sensitiveDataOrigin), so
// its signatures on TPMS_ATTEST are the TPM's. It is a primary key of the
// endorsement hierarchy, the EK's, so it needs no persistent storage.
func akTemplate() tpm2.TPMTPublic {
	return tpm2.TPMTPublic{
		Type:    tpm2.TPMAlgECC,
		NameAlg: tpm2.TPMAlgSHA256,
		ObjectAttributes: tpm2.TPMAObject{
			FixedTPM:            true,
			FixedParent:         true,
			SensitiveDataOrigin: true,
			UserWithAuth:        true,
			NoDA:                true,
			Restricted:          true,
			SignEncrypt:         true,
		},
		Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &tpm2.TPMSECCParms{
			Symmetric: tpm2.TPMTSymDefObject{Algorithm: tpm2.TPMAlgNull},
			Scheme: tpm2.TPMTECCScheme{
				Scheme:  tpm2.TPMAlgECDSA,
				Details: tpm2.NewTPMUAsymScheme(tpm2.TPMAlgECDSA, &tpm2.TPMSSigSchemeECDSA{HashAlg: tpm2.TPMAlgSHA256}),
			},
			CurveID: tpm2.TPMECCNistP256,
			KDF:     tpm2.TPMTKDFScheme{Scheme: tpm2.TPMAlgNull},
		}),
		Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{
			X: tpm2.TPM2BECCParameter{Buffer: akUnique[:]},
		}),
	}
}

// unmarshal parses a TPM structure from outside bytes: go-tpm's reflection
// unmarshaller is not promised to be panic-free, and trailing bytes are an
// error, so what is parsed is exactly what was sent.
func unmarshal[T tpm2.Marshallable, P interface {
	*T
	tpm2.Unmarshallable
}](what string, b []byte) (t *T, err error) {
	defer func() {
		if p := recover(); p != nil {
			t, err = nil, fmt.Errorf("%s: parser panic: %v", what, p)
		}
	}()
	t, err = unmarshalOnly[T, P](what, b)
	if err != nil {
		return nil, err
	}
	if !bytes.Equal(tpm2.Marshal(*t), b) {
		return nil, fmt.Errorf("%s: not canonically encoded or has trailing bytes", what)
	}
	return t, nil
}

// unmarshalOnly is go-tpm's Unmarshal with a parser panic turned into an
// error; it does not check for trailing bytes.
func unmarshalOnly[T tpm2.Marshallable, P interface {
	*T
	tpm2.Unmarshallable
}](what string, b []byte) (t *T, err error) {
	defer func() {
		if p := recover(); p != nil {
			t, err = nil, fmt.Errorf("%s: parser panic: %v", what, p)
		}
	}()
	t, err = tpm2.Unmarshal[T, P](b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	return t, nil
}

// ak is a parsed, checked attestation key.
type ak struct {
	pub  *ecdsa.PublicKey
	name []byte // TPM2B_NAME body: nameAlg || H(TPMT_PUBLIC), Part 1 §16
}

// parseAK decodes and checks an AK's public area, denying a malformed one
// as malformed and an unacceptable one as a broken chain of trust.
func parseAK(b []byte) (*ak, error) {
	pub, err := decodeAK(b)
	if err != nil {
		return nil, attest.Deny(attest.ClassMalformed, err)
	}
	key, err := checkAK(pub, b)
	if err != nil {
		return nil, attest.Deny(attest.ClassChain, err)
	}
	return key, nil
}

// decodeAK parses an AK's TPMT_PUBLIC. For ECC keys, the only kind an AK
// may be, the canonical size follows from the parsed fields, which is much
// cheaper than unmarshal's re-marshal round trip; FuzzAKCanonical holds the
// two checks equal.
func decodeAK(b []byte) (*tpm2.TPMTPublic, error) {
	pub, err := unmarshalOnly[tpm2.TPMTPublic]("ak-public", b)
	if err != nil {
		return nil, err
	}
	if n, ok := eccPublicSize(pub); ok {
		if n != len(b) {
			return nil, errors.New("ak-public: not canonically encoded or has trailing bytes")
		}
		return pub, nil
	}
	if !bytes.Equal(tpm2.Marshal(*pub), b) {
		return nil, errors.New("ak-public: not canonically encoded or has trailing bytes")
	}
	return pub, nil
}

// eccPublicSize is the encoded size of an ECC TPMT_PUBLIC (TPM 2.0 Part 2
// §12.2.4, §12.2.3.6): type, nameAlg, attributes, authPolicy, then
// TPMS_ECC_PARMS (symmetric: algorithm [+keyBits+mode]; scheme [+hashAlg];
// curveID; kdf [+hashAlg]) and the point. ok is false for other types, and
// for schemes whose details are not a single hash algorithm.
func eccPublicSize(pub *tpm2.TPMTPublic) (n int, ok bool) {
	if pub.Type != tpm2.TPMAlgECC {
		return 0, false
	}
	parms, err := pub.Parameters.ECCDetail()
	if err != nil {
		return 0, false
	}
	point, err := pub.Unique.ECC()
	if err != nil {
		return 0, false
	}
	n = 2 + 2 + 4 + 2 + len(pub.AuthPolicy.Buffer)
	n += 2
	if parms.Symmetric.Algorithm != tpm2.TPMAlgNull {
		n += 4
	}
	switch parms.Scheme.Scheme {
	case tpm2.TPMAlgNull:
		n += 2
	case tpm2.TPMAlgECDSA, tpm2.TPMAlgSM2, tpm2.TPMAlgECSchnorr, tpm2.TPMAlgECDH, tpm2.TPMAlgECMQV:
		n += 4 // TPMS_SCHEME_HASH: one hashAlg
	default:
		return 0, false // ECDAA's details carry a count too; others are unknown here
	}
	n += 2 // curveID
	n += 2
	if parms.KDF.Scheme != tpm2.TPMAlgNull {
		n += 2
	}
	n += 2 + len(point.X.Buffer) + 2 + len(point.Y.Buffer)
	return n, true
}

// checkAK rejects any key whose signature
// would not be a TPM statement (TPM 2.0 Part 1 §25.3 restricted signing keys,
// §27.2 fixedTPM): it must be a restricted signing key, not a decryption
// key, created inside this TPM and not duplicable, ECDSA P-256 with SHA-256.
func checkAK(pub *tpm2.TPMTPublic, b []byte) (*ak, error) {
	if pub.Type != tpm2.TPMAlgECC {
		return nil, fmt.Errorf("ak-public: type %#x, want ECC", pub.Type)
	}
	if pub.NameAlg != tpm2.TPMAlgSHA256 {
		return nil, fmt.Errorf("ak-public: nameAlg %#x, want SHA-256", pub.NameAlg)
	}
	a := pub.ObjectAttributes
	for _, c := range []struct {
		name      string
		got, want bool
	}{
		{"restricted", a.Restricted, true},
		{"sign", a.SignEncrypt, true},
		{"decrypt", a.Decrypt, false},
		{"fixedTPM", a.FixedTPM, true},
		{"fixedParent", a.FixedParent, true},
		{"sensitiveDataOrigin", a.SensitiveDataOrigin, true},
	} {
		if c.got != c.want {
			return nil, fmt.Errorf("ak-public: attribute %s is %v, want %v", c.name, c.got, c.want)
		}
	}
	parms, err := pub.Parameters.ECCDetail()
	if err != nil {
		return nil, fmt.Errorf("ak-public: parameters: %w", err)
	}
	if parms.CurveID != tpm2.TPMECCNistP256 {
		return nil, fmt.Errorf("ak-public: curve %#x, want NIST P-256", parms.CurveID)
	}
	if parms.Scheme.Scheme != tpm2.TPMAlgECDSA {
		return nil, fmt.Errorf("ak-public: scheme %#x, want ECDSA", parms.Scheme.Scheme)
	}
	ecdsaScheme, err := parms.Scheme.Details.ECDSA()
	if err != nil || ecdsaScheme.HashAlg != tpm2.TPMAlgSHA256 {
		return nil, errors.New("ak-public: ECDSA scheme hash is not SHA-256")
	}
	point, err := pub.Unique.ECC()
	if err != nil {
		return nil, fmt.Errorf("ak-public: unique: %w", err)
	}
	if len(point.X.Buffer) != 32 || len(point.Y.Buffer) != 32 {
		return nil, fmt.Errorf("ak-public: point of %d+%d bytes, want 32+32", len(point.X.Buffer), len(point.Y.Buffer))
	}
	raw := append(append([]byte{4}, point.X.Buffer...), point.Y.Buffer...)
	key, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), raw)
	if err != nil {
		return nil, fmt.Errorf("ak-public: point: %w", err)
	}
	digest := sha256.Sum256(b)
	name := binary.BigEndian.AppendUint16(nil, uint16(tpm2.TPMAlgSHA256))
	return &ak{pub: key, name: append(name, digest[:]...)}, nil
}
