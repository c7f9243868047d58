package tdxtest

import (
	"crypto/ecdsa"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"testing/fstest"
	"time"

	"github.com/palisade-cc/palisade/internal/attest/tdx"
)

// TCB info v3 and QE identity v2 JSON, as Intel PCS v4 serves them (Intel
// SGX and TDX PCS API, "TDX TCB Info V3", "Enclave Identity V2").
type (
	hexb    []byte
	tcbComp struct {
		SVN      byte   `json:"svn"`
		Category string `json:"category,omitempty"`
		Type     string `json:"type,omitempty"`
	}
	tcb struct {
		SGX    []tcbComp `json:"sgxtcbcomponents,omitempty"`
		PCESVN *uint16   `json:"pcesvn,omitempty"`
		TDX    []tcbComp `json:"tdxtcbcomponents,omitempty"`
		ISVSVN *uint16   `json:"isvsvn,omitempty"`
	}
	// TCBLevel is one entry of tcbLevels.
	TCBLevel struct {
		TCB         tcb      `json:"tcb"`
		TCBDate     string   `json:"tcbDate"`
		TCBStatus   string   `json:"tcbStatus"`
		AdvisoryIDs []string `json:"advisoryIDs,omitempty"`
	}
	tdxModule struct {
		MRSigner       hexb `json:"mrsigner"`
		Attributes     hexb `json:"attributes"`
		AttributesMask hexb `json:"attributesMask"`
	}
	tdxModuleIdentity struct {
		ID             string     `json:"id"`
		MRSigner       hexb       `json:"mrsigner"`
		Attributes     hexb       `json:"attributes"`
		AttributesMask hexb       `json:"attributesMask"`
		TCBLevels      []TCBLevel `json:"tcbLevels"`
	}
	tcbInfo struct {
		ID                      string              `json:"id"`
		Version                 int                 `json:"version"`
		IssueDate               time.Time           `json:"issueDate"`
		NextUpdate              time.Time           `json:"nextUpdate"`
		FMSPC                   string              `json:"fmspc"`
		PCEID                   string              `json:"pceId"`
		TCBType                 int                 `json:"tcbType"`
		TCBEvaluationDataNumber int                 `json:"tcbEvaluationDataNumber"`
		TDXModule               tdxModule           `json:"tdxModule"`
		TDXModuleIdentities     []tdxModuleIdentity `json:"tdxModuleIdentities"`
		TCBLevels               []TCBLevel          `json:"tcbLevels"`
	}
	enclaveIdentity struct {
		ID                      string     `json:"id"`
		Version                 int        `json:"version"`
		IssueDate               time.Time  `json:"issueDate"`
		NextUpdate              time.Time  `json:"nextUpdate"`
		TCBEvaluationDataNumber int        `json:"tcbEvaluationDataNumber"`
		MiscSelect              hexb       `json:"miscselect"`
		MiscSelectMask          hexb       `json:"miscselectMask"`
		Attributes              hexb       `json:"attributes"`
		AttributesMask          hexb       `json:"attributesMask"`
		MRSigner                hexb       `json:"mrsigner"`
		ISVProdID               uint16     `json:"isvprodid"`
		TCBLevels               []TCBLevel `json:"tcbLevels"`
	}
)

func (h hexb) MarshalJSON() ([]byte, error) { return json.Marshal(fmt.Sprintf("%X", []byte(h))) }

func u16(v uint16) *uint16 { return &v }

// PlatformLevel is a TDX TCB level for the SGX components and PCESVN of p and
// the given TDX (TEE_TCB_SVN) components.
func PlatformLevel(p Platform, tdx [16]byte, status string) TCBLevel {
	l := TCBLevel{TCBDate: "2025-01-01T00:00:00Z", TCBStatus: status}
	for i := range 16 {
		l.TCB.SGX = append(l.TCB.SGX, tcbComp{SVN: p.CPUSVN[i]})
		l.TCB.TDX = append(l.TCB.TDX, tcbComp{SVN: tdx[i]})
	}
	l.TCB.PCESVN = u16(p.PCESVN)
	if status != "UpToDate" {
		l.AdvisoryIDs = []string{"INTEL-SA-00837"}
	}
	return l
}

// TEE_TCB_SVN values of the default TCB levels: a quote whose TEE_TCB_SVN is
// UpToDateSVN rates UpToDate, SWHardeningSVN SWHardeningNeeded, OutOfDateSVN
// OutOfDate and RevokedSVN Revoked.
var (
	UpToDateSVN    = [16]byte{5, 0, 3}
	SWHardeningSVN = [16]byte{5, 0, 2}
	OutOfDateSVN   = [16]byte{4, 0, 2}
	RevokedSVN     = [16]byte{2, 0, 1}
)

// Collateral describes the collateral of a bundle; zero fields take defaults.
type Collateral struct {
	// IssueDate and NextUpdate bound TCB info, QE identity and CRLs.
	IssueDate, NextUpdate time.Time
	// TCBInfoNextUpdate overrides NextUpdate for the TCB info only.
	TCBInfoNextUpdate time.Time
	// TCBLevels override the default platform levels.
	TCBLevels []TCBLevel
	// FMSPC overrides the platform's FMSPC in the TCB info.
	FMSPC string
	// RevokedPCK and RevokedByRoot are serials on the PCK CRL and root CRL.
	RevokedPCK, RevokedByRoot []*big.Int
	// SignKey and SignCert override the TCB signing key and certificate.
	SignKey  *ecdsa.PrivateKey
	SignCert []byte
}

// Files builds the bundle files (tdx bundle layout) for the collateral.
func (c Collateral) Files(k *PKI) (fstest.MapFS, error) {
	issue, next := c.IssueDate, c.NextUpdate
	if issue.IsZero() {
		issue = Epoch.AddDate(0, 0, -7)
	}
	if next.IsZero() {
		next = Epoch.AddDate(0, 0, 23)
	}
	tcbNext := c.TCBInfoNextUpdate
	if tcbNext.IsZero() {
		tcbNext = next
	}
	fmspc := c.FMSPC
	if fmspc == "" {
		fmspc = hex.EncodeToString(k.Platform.FMSPC[:])
	}
	levels := c.TCBLevels
	if levels == nil {
		p := k.Platform
		levels = []TCBLevel{PlatformLevel(p, UpToDateSVN, "UpToDate"),
			PlatformLevel(p, SWHardeningSVN, "SWHardeningNeeded"),
			PlatformLevel(p, OutOfDateSVN, "OutOfDate"),
			PlatformLevel(p, RevokedSVN, "Revoked")}
	}
	key, cert := c.SignKey, c.SignCert
	if key == nil {
		key = k.TCBSignKey
	}
	if cert == nil {
		cert = PEM(k.TCBSign)
	}
	signChain := append(append([]byte(nil), cert...), PEM(k.Root)...)

	info := tcbInfo{ID: "TDX", Version: 3, IssueDate: issue, NextUpdate: tcbNext, FMSPC: fmspc,
		PCEID: hex.EncodeToString(k.Platform.PCEID[:]), TCBEvaluationDataNumber: 17,
		TDXModule: tdxModule{MRSigner: make(hexb, 48), Attributes: make(hexb, 8), AttributesMask: hexb{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}},
		TDXModuleIdentities: []tdxModuleIdentity{{ID: "TDX_01", MRSigner: make(hexb, 48), Attributes: make(hexb, 8),
			AttributesMask: hexb{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff},
			TCBLevels: []TCBLevel{{TCB: tcb{ISVSVN: u16(3)}, TCBDate: "2025-01-01T00:00:00Z", TCBStatus: "UpToDate"},
				{TCB: tcb{ISVSVN: u16(1)}, TCBDate: "2024-01-01T00:00:00Z", TCBStatus: "OutOfDate"}}}},
		TCBLevels: levels}
	tcbBody, err := signed("tcbInfo", info, key)
	if err != nil {
		return nil, err
	}
	qe := enclaveIdentity{ID: "TD_QE", Version: 2, IssueDate: issue, NextUpdate: next, TCBEvaluationDataNumber: 17,
		MiscSelect: hexb{0, 0, 0, 0}, MiscSelectMask: hexb{0xff, 0xff, 0xff, 0xff},
		Attributes:     hexb{0x11, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0},
		AttributesMask: hexb{0xfb, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0},
		MRSigner:       hexb(DefaultQE.MRSigner[:]), ISVProdID: DefaultQE.ISVProdID,
		TCBLevels: []TCBLevel{{TCB: tcb{ISVSVN: u16(4)}, TCBDate: "2025-01-01T00:00:00Z", TCBStatus: "UpToDate"},
			{TCB: tcb{ISVSVN: u16(2)}, TCBDate: "2024-01-01T00:00:00Z", TCBStatus: "OutOfDate"},
			{TCB: tcb{ISVSVN: u16(0)}, TCBDate: "2023-01-01T00:00:00Z", TCBStatus: "Revoked"}}}
	qeBody, err := signed("enclaveIdentity", qe, key)
	if err != nil {
		return nil, err
	}
	pckCRL, err := CRL(k.PCKCA, k.PCKCAKey, issue, next, c.RevokedPCK...)
	if err != nil {
		return nil, fmt.Errorf("PCK CRL: %w", err)
	}
	rootCRL, err := CRL(k.Root, k.RootKey, issue, next, c.RevokedByRoot...)
	if err != nil {
		return nil, fmt.Errorf("root CRL: %w", err)
	}
	return fstest.MapFS{
		tdx.TCBInfoFile(fmspc):          {Data: tcbBody},
		tdx.TCBInfoChainFile(fmspc):     {Data: signChain},
		tdx.QEIdentityFile:              {Data: qeBody},
		tdx.QEIdentityChainFile:         {Data: signChain},
		tdx.PCKCRLFile("platform"):      {Data: pckCRL},
		tdx.PCKCRLChainFile("platform"): {Data: PEM(k.PCKCA, k.Root)},
		tdx.RootCACRLFile:               {Data: rootCRL},
	}, nil
}

// signed wraps v as PCS does: {"<name>": v, "signature": hex(r‖s)} where the
// signature is ECDSA P-256/SHA-256 over the exact bytes of v.
func signed(name string, v any, key *ecdsa.PrivateKey) ([]byte, error) {
	raw, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	sig, err := rawSign(key, raw)
	if err != nil {
		return nil, err
	}
	return fmt.Appendf(nil, `{"%s":%s,"signature":"%s"}`, name, raw, hex.EncodeToString(sig)), nil
}

// WriteDir writes bundle files into dir, for tests of the on-disk layout.
func WriteDir(dir string, files fstest.MapFS) error {
	for name, f := range files {
		if err := os.WriteFile(filepath.Join(dir, name), f.Data, 0o644); err != nil {
			return err
		}
	}
	return nil
}
