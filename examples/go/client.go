// A minimal FerroHSM client on the Go standard library: TLS 1.3, bearer token, optional client
// certificate (mutual TLS), correlation ids, and API errors carrying code and request id.
package main

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"
)

// Client talks to one FerroHSM server.
type Client struct {
	BaseURL string
	Token   string
	HTTP    *http.Client
}

// APIError is FerroHSM's error body: {"error": {"code", "message", "request_id"}}.
type APIError struct {
	Status    int
	Code      string `json:"code"`
	Message   string `json:"message"`
	RequestID string `json:"request_id"`
}

func (e *APIError) Error() string {
	return fmt.Sprintf("%s (%s, request id %s)", e.Message, e.Code, e.RequestID)
}

// NewClientFromEnv reads FERROHSM_URL, FERROHSM_TOKEN, FERROHSM_CA_CERT and, for mutual TLS,
// FERROHSM_CLIENT_CERT and FERROHSM_CLIENT_KEY. FERROHSM_URL may list several nodes separated by
// commas (as the CLI and the Python SDK take it); this small client talks to the first one and
// does not fail over.
func NewClientFromEnv() (*Client, error) {
	base := strings.TrimSpace(strings.Split(os.Getenv("FERROHSM_URL"), ",")[0])
	if !strings.HasPrefix(base, "https://") {
		return nil, errors.New("FERROHSM_URL must be set to https://HOST:PORT")
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS13}
	if caFile := os.Getenv("FERROHSM_CA_CERT"); caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("reading FERROHSM_CA_CERT: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("no certificate in %s", caFile)
		}
		cfg.RootCAs = pool
	}
	if certFile := os.Getenv("FERROHSM_CLIENT_CERT"); certFile != "" {
		pair, err := tls.LoadX509KeyPair(certFile, os.Getenv("FERROHSM_CLIENT_KEY"))
		if err != nil {
			return nil, fmt.Errorf("loading the client certificate: %w", err)
		}
		cfg.Certificates = []tls.Certificate{pair}
	}
	transport := &http.Transport{TLSClientConfig: cfg, IdleConnTimeout: 30 * time.Second}
	return &Client{
		BaseURL: strings.TrimRight(base, "/"),
		Token:   os.Getenv("FERROHSM_TOKEN"),
		HTTP:    &http.Client{Transport: transport, Timeout: 30 * time.Second},
	}, nil
}

// Do sends one JSON request and decodes the JSON answer into out (when not nil).
func (c *Client) Do(method, path string, body any, correlationID string, out any) error {
	var payload io.Reader
	if body != nil {
		data, err := json.Marshal(body)
		if err != nil {
			return err
		}
		payload = bytes.NewReader(data)
	}
	req, err := http.NewRequest(method, c.BaseURL+path, payload)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", "application/json")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.Token)
	}
	if correlationID != "" {
		req.Header.Set("X-Correlation-ID", correlationID)
	}
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return err
	}
	var envelope struct {
		Error *APIError `json:"error"`
	}
	if json.Unmarshal(data, &envelope) == nil && envelope.Error != nil {
		envelope.Error.Status = resp.StatusCode
		return envelope.Error
	}
	if resp.StatusCode >= 300 {
		return &APIError{Status: resp.StatusCode, Code: "http_error",
			Message: resp.Status, RequestID: resp.Header.Get("X-Request-ID")}
	}
	if out != nil {
		return json.Unmarshal(data, out)
	}
	return nil
}

// Key is the part of FerroHSM's key object this example needs.
type Key struct {
	ID             string `json:"id"`
	Name           string `json:"name"`
	Algorithm      string `json:"algorithm"`
	PrimaryVersion int    `json:"primary_version"`
}

// Signature is a sign answer with the DER signature decoded.
type Signature struct {
	DER        []byte
	KeyVersion int
	Algorithm  string
}

func keyPath(key, suffix string) string {
	return "/v1/keys/" + url.PathEscape(key) + suffix
}

// GetKey describes a key by id or name.
func (c *Client) GetKey(key string) (*Key, error) {
	var k Key
	return &k, c.Do("GET", keyPath(key, ""), nil, "", &k)
}

// SignDigest signs a precomputed digest and returns the DER signature.
func (c *Client) SignDigest(key string, digest []byte, correlationID string) (*Signature, error) {
	var out struct {
		Signature  string `json:"signature"`
		KeyVersion int    `json:"key_version"`
		Algorithm  string `json:"algorithm"`
	}
	body := map[string]string{"digest": base64.StdEncoding.EncodeToString(digest)}
	if err := c.Do("POST", keyPath(key, "/sign"), body, correlationID, &out); err != nil {
		return nil, err
	}
	der, err := base64.StdEncoding.DecodeString(out.Signature)
	if err != nil {
		return nil, fmt.Errorf("signature is not base64: %w", err)
	}
	return &Signature{DER: der, KeyVersion: out.KeyVersion, Algorithm: out.Algorithm}, nil
}

// PublicKeyPEM returns the PEM public key of one version of an asymmetric key.
func (c *Client) PublicKeyPEM(key string, version int) (string, error) {
	var out struct {
		PEM string `json:"pem"`
	}
	path := keyPath(key, fmt.Sprintf("/public-key?version=%d", version))
	return out.PEM, c.Do("GET", path, nil, "", &out)
}
