package tpm

import (
	"crypto/ecdsa"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"math/big"

	"github.com/google/go-tpm/tpm2"
)

// TPM 2.0 Part 2 §6.2 and §6.9.
const (
	tpmGeneratedValue = 0xff544347 // TPM_GENERATED_VALUE, "\xffTCG"
	tpmSTAttestQuote  = 0x8018     // TPM_ST_ATTEST_QUOTE
)

// Bounds from Part 2: TPM2B_NAME ≤ 2+64 for SHA-512, TPM2B_DATA and
// TPM2B_DIGEST ≤ 64, PCR_SELECT_MAX 4 bytes (32 PCRs), HASH_COUNT banks.
const (
	maxName      = 2 + 64
	maxData      = 64
	maxSelect    = 4
	maxBanks     = 16
	maxQuoteSize = 1024
)

// attestation is a TPMS_ATTEST (Part 2 §10.12.12), parsed by hand so that
// magic and type are checked by us, and the rest parsed only once the type
// says it is a quote.
type attestation struct {
	magic           uint32
	typ             uint16
	qualifiedSigner []byte
	extraData       []byte
	firmwareVersion uint64
	attested        []byte // the TPMU_ATTEST bytes
}

// quoteInfo is TPMS_QUOTE_INFO (Part 2 §10.12.4).
type quoteInfo struct {
	banks     []bankSelection
	pcrDigest []byte
}

type bankSelection struct {
	hash uint16
	pcrs []int
}

// beReader reads big-endian TPM fields (Part 1 §18: TPM structures are
// big-endian) and remembers the first short read.
type beReader struct {
	b   []byte
	err error
}

func (r *beReader) take(n int, what string) []byte {
	if r.err != nil {
		return nil
	}
	if n > len(r.b) {
		r.err = fmt.Errorf("%s: need %d bytes, %d left", what, n, len(r.b))
		return nil
	}
	p := r.b[:n]
	r.b = r.b[n:]
	return p
}

func (r *beReader) u8(what string) uint8 {
	if p := r.take(1, what); p != nil {
		return p[0]
	}
	return 0
}

func (r *beReader) u16(what string) uint16 {
	if p := r.take(2, what); p != nil {
		return binary.BigEndian.Uint16(p)
	}
	return 0
}

func (r *beReader) u32(what string) uint32 {
	if p := r.take(4, what); p != nil {
		return binary.BigEndian.Uint32(p)
	}
	return 0
}

func (r *beReader) u64(what string) uint64 {
	if p := r.take(8, what); p != nil {
		return binary.BigEndian.Uint64(p)
	}
	return 0
}

func (r *beReader) sized(max int, what string) []byte {
	n := int(r.u16(what + " size"))
	if r.err == nil && n > max {
		r.err = fmt.Errorf("%s: %d bytes, at most %d", what, n, max)
		return nil
	}
	return r.take(n, what)
}

// parseAttestation parses the fields every TPMS_ATTEST has.
func parseAttestation(b []byte) (*attestation, error) {
	if len(b) > maxQuoteSize {
		return nil, fmt.Errorf("quote: %d bytes, at most %d", len(b), maxQuoteSize)
	}
	r := &beReader{b: b}
	a := &attestation{}
	a.magic = r.u32("quote: magic")
	a.typ = r.u16("quote: type")
	a.qualifiedSigner = r.sized(maxName, "quote: qualifiedSigner")
	a.extraData = r.sized(maxData, "quote: extraData")
	r.take(8+4+4+1, "quote: clockInfo")
	a.firmwareVersion = r.u64("quote: firmwareVersion")
	if r.err != nil {
		return nil, r.err
	}
	a.attested = r.b
	return a, nil
}

// parseQuoteInfo parses the TPMS_QUOTE_INFO of a TPM_ST_ATTEST_QUOTE.
func parseQuoteInfo(b []byte) (*quoteInfo, error) {
	r := &beReader{b: b}
	n := r.u32("quote: pcrSelect count")
	if r.err == nil && n > maxBanks {
		return nil, fmt.Errorf("quote: %d PCR banks selected, at most %d", n, maxBanks)
	}
	q := &quoteInfo{}
	for i := 0; r.err == nil && i < int(n); i++ {
		hash := r.u16("quote: pcrSelect hash")
		size := int(r.u8("quote: sizeofSelect"))
		if r.err == nil && size > maxSelect {
			return nil, fmt.Errorf("quote: pcrSelect[%d]: sizeofSelect %d, at most %d", i, size, maxSelect)
		}
		sel := r.take(size, "quote: pcrSelect")
		var pcrs []int
		for p := range size * 8 {
			if sel != nil && sel[p/8]&(1<<(p%8)) != 0 {
				pcrs = append(pcrs, p)
			}
		}
		q.banks = append(q.banks, bankSelection{hash, pcrs})
	}
	q.pcrDigest = r.sized(maxData, "quote: pcrDigest")
	if r.err != nil {
		return nil, r.err
	}
	if len(r.b) != 0 {
		return nil, fmt.Errorf("quote: %d trailing bytes", len(r.b))
	}
	return q, nil
}

// signature is an ECDSA TPMT_SIGNATURE (Part 2 §11.3.4).
type signature struct {
	r, s *big.Int
}

func parseSignature(b []byte) (*signature, error) {
	sig, err := unmarshal[tpm2.TPMTSignature]("signature", b)
	if err != nil {
		return nil, err
	}
	if sig.SigAlg != tpm2.TPMAlgECDSA {
		return nil, fmt.Errorf("signature: algorithm %#x, want ECDSA", sig.SigAlg)
	}
	e, err := sig.Signature.ECDSA()
	if err != nil {
		return nil, fmt.Errorf("signature: %w", err)
	}
	if len(e.SignatureR.Buffer) > 32 || len(e.SignatureS.Buffer) > 32 {
		return nil, errors.New("signature: ECDSA r or s longer than 32 bytes")
	}
	return &signature{r: new(big.Int).SetBytes(e.SignatureR.Buffer), s: new(big.Int).SetBytes(e.SignatureS.Buffer)}, nil
}

// verify checks that key signed msg with ECDSA over SHA-256: the AK's scheme
// fixes the hash, so the signature's unsigned hash field is not consulted.
func (s *signature) verify(key *ecdsa.PublicKey, msg []byte) error {
	d := sha256.Sum256(msg)
	if !ecdsa.Verify(key, d[:], s.r, s.s) {
		return errors.New("signature: quote is not signed by the AK")
	}
	return nil
}
