package tdxtest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"math/big"
)

// Body is every field of a TD quote body (Intel TDX DCAP Quote Generation
// Library and Quote Verification Library API, Appendix A.3.2 "TD Quote Body").
type Body struct {
	TeeTCBSVN      [16]byte
	MRSEAM         [48]byte
	MRSignerSEAM   [48]byte
	SEAMAttributes [8]byte
	TDAttributes   [8]byte
	XFAM           [8]byte
	MRTD           [48]byte
	MRConfigID     [48]byte
	MROwner        [48]byte
	MROwnerConfig  [48]byte
	RTMR           [4][48]byte
	ReportData     [64]byte
}

// Bytes is the 584-byte little-endian ABI encoding of b.
func (b *Body) Bytes() []byte {
	out := make([]byte, 0, BodySize)
	for _, f := range [][]byte{b.TeeTCBSVN[:], b.MRSEAM[:], b.MRSignerSEAM[:], b.SEAMAttributes[:],
		b.TDAttributes[:], b.XFAM[:], b.MRTD[:], b.MRConfigID[:], b.MROwner[:], b.MROwnerConfig[:],
		b.RTMR[0][:], b.RTMR[1][:], b.RTMR[2][:], b.RTMR[3][:], b.ReportData[:]} {
		out = append(out, f...)
	}
	return out
}

// Sizes of the quote v4 layout (DCAP Quote Generation API Appendix A.3).
const (
	HeaderSize   = 48
	BodySize     = 584
	QEReportSize = 384
)

// IntelQEVendorID is the QE vendor ID of Intel's quoting enclave.
var IntelQEVendorID = [16]byte{0x93, 0x9a, 0x72, 0x33, 0xf7, 0x9c, 0x4c, 0xa9, 0x94, 0x0a, 0x0d, 0xb3, 0x95, 0x7f, 0x06, 0x07}

// QE describes the quoting enclave whose report (an SGX REPORT body,
// Intel SGX SDM Vol. 3D §38.15 / DCAP A.4.11) certifies the attestation key.
type QE struct {
	CPUSVN     [16]byte
	MiscSelect uint32
	Attributes [16]byte
	MREnclave  [32]byte
	MRSigner   [32]byte
	ISVProdID  uint16
	ISVSVN     uint16
}

// DefaultQE matches the QE identity the collateral publishes.
var DefaultQE = QE{
	Attributes: [16]byte{0x11},
	MREnclave:  [32]byte{0xee, 0x01},
	MRSigner:   [32]byte{0xdc, 0x9e, 0x2a, 0x7c, 0x6f, 0x94, 0x8f, 0x17, 0x47, 0x4e, 0x34, 0xa7, 0xfc, 0x43, 0xed, 0x03, 0x0f, 0x7c, 0x15, 0x63, 0xf1, 0xba, 0xbd, 0xdf, 0x63, 0x40, 0xc8, 0x2e, 0x0e, 0x54, 0xa8, 0xc5},
	ISVProdID:  2,
	ISVSVN:     4,
}

// Signer produces quote v4 blobs the way a TDX quoting enclave does: an
// attestation key signs header ‖ body, the QE report commits to that key and
// is signed by the PCK key, and certification data type 6 carries the QE
// report and a type-5 PCK chain.
type Signer struct {
	PKI *PKI
	QE  QE
	// AttestKey signs quotes; QEAuthData is the QE authentication data.
	AttestKey  *ecdsa.PrivateKey
	QEAuthData []byte
	// Chain overrides the PEM PCK chain (nil: PKI.ChainPEM()).
	Chain []byte
	// PCKKey overrides the key that signs the QE report (nil: PKI.PCKKey).
	PCKKey *ecdsa.PrivateKey
	// CertifiedKey overrides the key the QE report commits to (nil: AttestKey).
	CertifiedKey *ecdsa.PublicKey
}

// NewSigner returns a signer with a fresh attestation key under k.
func NewSigner(k *PKI) (*Signer, error) {
	ak, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	auth := make([]byte, 32)
	for i := range auth {
		auth[i] = byte(i)
	}
	return &Signer{PKI: k, QE: DefaultQE, AttestKey: ak, QEAuthData: auth}, nil
}

// Header is the 48-byte quote v4 header (DCAP A.3.1): version 4, attestation
// key type 2 (ECDSA-256-with-P-256), TEE type 0x81 (TDX).
func Header() []byte {
	h := make([]byte, HeaderSize)
	binary.LittleEndian.PutUint16(h[0:], 4)
	binary.LittleEndian.PutUint16(h[2:], 2)
	binary.LittleEndian.PutUint32(h[4:], 0x81)
	copy(h[12:28], IntelQEVendorID[:])
	return h
}

// RawKey is the 64-byte X ‖ Y encoding of a P-256 key used inside quotes.
func RawKey(pub *ecdsa.PublicKey) []byte {
	b, _ := pub.Bytes() // 0x04 ‖ X ‖ Y
	return b[1:]
}

func rawSign(key *ecdsa.PrivateKey, msg []byte) ([]byte, error) {
	h := sha256.Sum256(msg)
	r, s, err := ecdsa.Sign(rand.Reader, key, h[:])
	if err != nil {
		return nil, err
	}
	out := make([]byte, 64)
	r.FillBytes(out[:32])
	s.FillBytes(out[32:])
	return out, nil
}

// QEReport is the 384-byte SGX report body of the QE; its REPORT_DATA is
// SHA-256(attestation key ‖ QE auth data) ‖ 32 zero bytes (DCAP A.4.11).
func (s *Signer) QEReport() []byte {
	key := s.CertifiedKey
	if key == nil {
		key = &s.AttestKey.PublicKey
	}
	r := make([]byte, QEReportSize)
	copy(r[0:16], s.QE.CPUSVN[:])
	binary.LittleEndian.PutUint32(r[16:], s.QE.MiscSelect)
	copy(r[48:64], s.QE.Attributes[:])
	copy(r[64:96], s.QE.MREnclave[:])
	copy(r[128:160], s.QE.MRSigner[:])
	binary.LittleEndian.PutUint16(r[256:], s.QE.ISVProdID)
	binary.LittleEndian.PutUint16(r[258:], s.QE.ISVSVN)
	d := sha256.Sum256(append(RawKey(key), s.QEAuthData...))
	copy(r[320:352], d[:])
	return r
}

// Quote returns a signed quote v4 over b.
func (s *Signer) Quote(b Body) ([]byte, error) {
	signed := append(Header(), b.Bytes()...)
	sig, err := rawSign(s.AttestKey, signed)
	if err != nil {
		return nil, err
	}
	pckKey := s.PCKKey
	if pckKey == nil {
		pckKey = s.PKI.PCKKey
	}
	qe := s.QEReport()
	qeSig, err := rawSign(pckKey, qe)
	if err != nil {
		return nil, err
	}
	chain := s.Chain
	if chain == nil {
		chain = s.PKI.ChainPEM()
	}
	if len(s.QEAuthData) > 0xffff {
		return nil, fmt.Errorf("QE auth data: %d bytes, at most 65535", len(s.QEAuthData))
	}
	// Certification data type 6: QE report certification data (A.3.11).
	var cd []byte
	cd = append(cd, qe...)
	cd = append(cd, qeSig...)
	cd = binary.LittleEndian.AppendUint16(cd, uint16(len(s.QEAuthData)))
	cd = append(cd, s.QEAuthData...)
	cd = binary.LittleEndian.AppendUint16(cd, 5) // type 5: PCK cert chain
	cd = binary.LittleEndian.AppendUint32(cd, uint32(len(chain)))
	cd = append(cd, chain...)

	var sd []byte
	sd = append(sd, sig...)
	sd = append(sd, RawKey(&s.AttestKey.PublicKey)...)
	sd = binary.LittleEndian.AppendUint16(sd, 6)
	sd = binary.LittleEndian.AppendUint32(sd, uint32(len(cd)))
	sd = append(sd, cd...)

	out := signed
	out = binary.LittleEndian.AppendUint32(out, uint32(len(sd)))
	return append(out, sd...), nil
}

// Serial returns a big.Int, for revocation lists in tests.
func Serial(n int64) *big.Int { return big.NewInt(n) }
