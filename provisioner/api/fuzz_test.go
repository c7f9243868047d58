package api

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"testing"

	"github.com/palisade-cc/palisade/provisioner/inventory"
)

// FuzzRequest sends arbitrary methods, paths and bodies with the admin
// token: the API never panics and never answers 5xx to bad input.
func FuzzRequest(f *testing.F) {
	dir := f.TempDir()
	inv, err := inventory.Open(filepath.Join(dir, "inv.db"), inventory.Options{})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { inv.Close() })
	im, _ := NewImages(filepath.Join(dir, "images"))
	s, err := New(inv, Options{AdminToken: adminTok, Images: im})
	if err != nil {
		f.Fatal(err)
	}
	f.Add("PUT", "/api/v1/profiles/w", []byte(`{"name":"w","image":"u.efi","platform":"tpm","role":"worker"}`))
	f.Add("POST", "/api/v1/machines/52:54:00:00:00:01/accept", []byte(`{"profile":"w"}`))
	f.Add("POST", "/api/v1/machines/52:54:00:00:00:01/state", []byte(`{"state":"joined"}`))
	f.Add("POST", "/api/v1/machines/52:54:00:00:00:01/assign", []byte(`{"profile":7}`))
	f.Add("GET", "/api/v1/events?after=x", []byte(nil))
	f.Add("PUT", "/api/v1/images/a.efi", []byte("data"))
	f.Add("DELETE", "/api/v1/machines/zz", []byte(nil))
	f.Fuzz(func(t *testing.T, method, path string, body []byte) {
		req, err := http.NewRequest(method, "http://x"+path, bytes.NewReader(body))
		if err != nil {
			return
		}
		req.Header.Set("Authorization", "Bearer "+adminTok)
		w := httptest.NewRecorder()
		s.ServeHTTP(w, req)
		if w.Code >= 500 {
			t.Fatalf("%s %s %q: %d %s", method, path, body, w.Code, w.Body)
		}
	})
}
