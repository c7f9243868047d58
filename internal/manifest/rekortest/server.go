package rekortest

import (
	"encoding/hex"
	"encoding/json"
	"net/http"
	"strings"

	"github.com/sigstore/rekor/pkg/generated/models"
	"github.com/transparency-dev/merkle/rfc6962"
)

// Handler serves the part of Rekor's v1 REST API (openapi.yaml) a
// publisher uses, backed by l: POST /api/v1/log/entries (201, or 409 with
// Location for an entry already logged), GET /api/v1/log/entries/{uuid}
// and GET /api/v1/log/publicKey. With ProofLater, a created entry comes
// back without its inclusion proof (as a log that has not integrated it yet).
func (l *Log) Handler(proofLater bool) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /api/v1/log/entries", func(w http.ResponseWriter, r *http.Request) {
		var pe struct {
			Kind string          `json:"kind"`
			Spec json.RawMessage `json:"spec"`
		}
		if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 8<<20)).Decode(&pe); err != nil || pe.Kind != "dsse" {
			http.Error(w, `{"code":400,"message":"want a dsse entry"}`, http.StatusBadRequest)
			return
		}
		var spec models.DSSEV001Schema
		if err := json.Unmarshal(pe.Spec, &spec); err != nil || spec.ProposedContent == nil || spec.ProposedContent.Envelope == nil {
			http.Error(w, `{"code":400,"message":"no proposedContent"}`, http.StatusBadRequest)
			return
		}
		vs := make([][]byte, len(spec.ProposedContent.Verifiers))
		for i, v := range spec.ProposedContent.Verifiers {
			vs[i] = v
		}
		body, err := l.body([]byte(*spec.ProposedContent.Envelope), vs...)
		if err != nil {
			http.Error(w, `{"code":400,"message":"invalid entry"}`, http.StatusBadRequest)
			return
		}
		uuid := hex.EncodeToString(rfc6962.DefaultHasher.HashLeaf(body))
		w.Header().Set("Location", "/api/v1/log/entries/"+uuid)
		if l.find(uuid) >= 0 {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusConflict)
			w.Write([]byte(`{"code":409,"message":"an equivalent entry already exists in the transparency log"}`))
			return
		}
		i := l.AddBody(body)
		l.writeEntry(w, http.StatusCreated, uuid, i, proofLater)
	})
	mux.HandleFunc("GET /api/v1/log/entries/{uuid}", func(w http.ResponseWriter, r *http.Request) {
		uuid := strings.ToLower(r.PathValue("uuid"))
		i := l.find(uuid)
		if i < 0 {
			http.Error(w, `{"code":404,"message":"not found"}`, http.StatusNotFound)
			return
		}
		l.writeEntry(w, http.StatusOK, uuid, i, false)
	})
	mux.HandleFunc("GET /api/v1/log/publicKey", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/x-pem-file")
		w.Write(l.PublicKeyPEM())
	})
	return mux
}

func (l *Log) find(uuid string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	for i, b := range l.leaves {
		if hex.EncodeToString(rfc6962.DefaultHasher.HashLeaf(b)) == uuid {
			return i
		}
	}
	return -1
}

func (l *Log) writeEntry(w http.ResponseWriter, code int, uuid string, i int, noProof bool) {
	e, err := l.Entry(i)
	if err != nil {
		http.Error(w, `{"code":500}`, http.StatusInternalServerError)
		return
	}
	if noProof {
		var m map[string]any
		json.Unmarshal(e, &m)
		delete(m["verification"].(map[string]any), "inclusionProof")
		e, _ = json.Marshal(m)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(map[string]json.RawMessage{uuid: e})
}
