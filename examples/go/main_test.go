package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
)

func writeArtefact(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "app.tar.gz")
	data := make([]byte, 64<<10)
	if _, err := rand.Read(data); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// fakeHSM answers the three calls SignArtefact makes, signing with a local P-256 key, and
// records the correlation id it was sent.
func fakeHSM(t *testing.T, seen *string) *httptest.Server {
	t.Helper()
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, _ := x509.MarshalPKIXPublicKey(&priv.PublicKey)
	pubPEM := string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
	mux := http.NewServeMux()
	reply := func(w http.ResponseWriter, status int, v any) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_ = json.NewEncoder(w).Encode(v)
	}
	mux.HandleFunc("/v1/keys/", func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer test-token" {
			reply(w, 401, map[string]any{"error": map[string]string{
				"code": "unauthenticated", "message": "bad token", "request_id": "r-401"}})
			return
		}
		switch r.URL.Path {
		case "/v1/keys/release-signing":
			reply(w, 200, Key{ID: "k1", Name: "release-signing", Algorithm: "ec-p256", PrimaryVersion: 1})
		case "/v1/keys/release-signing/sign":
			*seen = r.Header.Get("X-Correlation-ID")
			var body struct{ Digest string }
			_ = json.NewDecoder(r.Body).Decode(&body)
			digest, _ := base64.StdEncoding.DecodeString(body.Digest)
			sig, _ := ecdsa.SignASN1(rand.Reader, priv, digest)
			reply(w, 200, map[string]any{"signature": base64.StdEncoding.EncodeToString(sig),
				"key_version": 1, "algorithm": "ecdsa-sha256"})
		case "/v1/keys/release-signing/public-key":
			reply(w, 200, map[string]any{"version": 1, "pem": pubPEM})
		default:
			reply(w, 404, map[string]any{"error": map[string]string{
				"code": "not_found", "message": "no such key", "request_id": "r-404"}})
		}
	})
	srv := httptest.NewUnstartedServer(mux)
	srv.TLS = &tls.Config{MinVersion: tls.VersionTLS13}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	if err := os.WriteFile(caFile, caPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv("FERROHSM_URL", srv.URL)
	t.Setenv("FERROHSM_CA_CERT", caFile)
	t.Setenv("FERROHSM_TOKEN", "test-token")
	return srv
}

func TestSignArtefactAgainstFakeServer(t *testing.T) {
	var seen string
	fakeHSM(t, &seen)
	client, err := NewClientFromEnv()
	if err != nil {
		t.Fatal(err)
	}
	artefact := writeArtefact(t)
	res, err := SignArtefact(client, "release-signing", artefact, "", "build-fake-1")
	if err != nil {
		t.Fatal(err)
	}
	if seen != "build-fake-1" {
		t.Fatalf("server saw correlation id %q", seen)
	}
	if _, err := os.Stat(res.SignaturePath); err != nil {
		t.Fatal(err)
	}
}

func TestAPIErrorsCarryCodeAndRequestID(t *testing.T) {
	var seen string
	fakeHSM(t, &seen)
	client, err := NewClientFromEnv()
	if err != nil {
		t.Fatal(err)
	}
	_, err = SignArtefact(client, "no-such-key", writeArtefact(t), "", "c")
	var apiErr *APIError
	if !errors.As(err, &apiErr) || apiErr.Code != "not_found" || apiErr.RequestID != "r-404" {
		t.Fatalf("want a not_found APIError with request id, got %v", err)
	}
	client.Token = "wrong"
	_, err = client.GetKey("release-signing")
	if !errors.As(err, &apiErr) || apiErr.Status != 401 {
		t.Fatalf("want 401, got %v", err)
	}
}

// TestSignArtefactLive is Journey 2 against a real FerroHSM. CI's pytest journey test starts a
// server and sets FERROHSM_URL, FERROHSM_CA_CERT, FERROHSM_TOKEN (a service token), FERROHSM_KEY
// and FERROHSM_CORRELATION_ID, then checks the audit log for that correlation id.
func TestSignArtefactLive(t *testing.T) {
	key := os.Getenv("FERROHSM_KEY")
	if os.Getenv("FERROHSM_URL") == "" || key == "" {
		t.Skip("set FERROHSM_URL, FERROHSM_CA_CERT, FERROHSM_TOKEN (service role) and " +
			"FERROHSM_KEY (an ec or rsa sign key) to run against a live server")
	}
	client, err := NewClientFromEnv()
	if err != nil {
		t.Fatal(err)
	}
	cid := os.Getenv("FERROHSM_CORRELATION_ID")
	if cid == "" {
		cid = defaultCorrelationID()
	}
	res, err := SignArtefact(client, key, writeArtefact(t), "", cid)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("signed with %s v%d (%s), correlation id %s, openssl: %s", key, res.KeyVersion,
		res.Algorithm, res.CorrelationID, orNotInstalled(res.OpenSSL))
}
