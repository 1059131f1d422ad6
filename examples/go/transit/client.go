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
	"os"
	"strings"
	"time"
)

// Client speaks Vault's transit API the way Vault's own Go API client does: the token in
// X-Vault-Token, writes as PUT with a JSON body (and no Content-Type), listings with the LIST
// method, answers in Vault's envelope {"data": {...}} and errors as {"errors": [...]}.
// It needs only the standard library, and works against Vault and FerroHSM alike.
type Client struct {
	Addr  string // https://host:port, without /v1
	Mount string // the transit mount path, "transit" by default
	Token string
	HTTP  *http.Client
}

// VaultError is a non-2xx answer: its status and Vault's "errors" list.
type VaultError struct {
	Status int
	Errors []string
	Data   map[string]interface{} // a batch's results ride along on its 400
}

func (e *VaultError) Error() string {
	return fmt.Sprintf("vault: %d: %s", e.Status, strings.Join(e.Errors, "; "))
}

// NewClient reads VAULT_ADDR, VAULT_TOKEN and VAULT_CACERT, the variables Vault's tools read.
func NewClient() (*Client, error) {
	addr, token := os.Getenv("VAULT_ADDR"), os.Getenv("VAULT_TOKEN")
	if addr == "" || token == "" {
		return nil, errors.New("set VAULT_ADDR and VAULT_TOKEN (and VAULT_CACERT for a private CA)")
	}
	conf := &tls.Config{MinVersion: tls.VersionTLS12}
	if caFile := os.Getenv("VAULT_CACERT"); caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, err
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("no certificate in %s", caFile)
		}
		conf.RootCAs = pool
	}
	return &Client{Addr: strings.TrimRight(addr, "/"), Mount: "transit", Token: token,
		HTTP: &http.Client{Timeout: 30 * time.Second,
			Transport: &http.Transport{TLSClientConfig: conf}}}, nil
}

// Do sends one request to /v1/<mount>/<path> and returns the envelope's "data".
func (c *Client) Do(method, path string, body map[string]interface{}) (map[string]interface{}, error) {
	var reader io.Reader
	if body != nil {
		raw, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		reader = bytes.NewReader(raw)
	}
	req, err := http.NewRequest(method, c.Addr+"/v1/"+c.Mount+"/"+path, reader)
	if err != nil {
		return nil, err
	}
	req.Header.Set("X-Vault-Token", c.Token)
	req.Header.Set("X-Vault-Request", "true")
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var envelope struct {
		Data     map[string]interface{} `json:"data"`
		Errors   []string               `json:"errors"`
		Warnings []string               `json:"warnings"`
	}
	if resp.StatusCode != http.StatusNoContent {
		if err := json.NewDecoder(resp.Body).Decode(&envelope); err != nil {
			return nil, fmt.Errorf("%s %s: %d and no JSON answer: %w", method, path, resp.StatusCode, err)
		}
	}
	if resp.StatusCode >= 300 {
		return nil, &VaultError{Status: resp.StatusCode, Errors: envelope.Errors, Data: envelope.Data}
	}
	return envelope.Data, nil
}

// Write is Vault's Logical().Write: PUT.
func (c *Client) Write(path string, body map[string]interface{}) (map[string]interface{}, error) {
	if body == nil {
		body = map[string]interface{}{}
	}
	return c.Do(http.MethodPut, path, body)
}

// Encrypt returns the vault:v<N>: ciphertext of plaintext (aad may be nil).
func (c *Client) Encrypt(key string, plaintext, aad []byte) (string, error) {
	body := map[string]interface{}{"plaintext": b64(plaintext)}
	if aad != nil {
		body["associated_data"] = b64(aad)
	}
	data, err := c.Write("encrypt/"+key, body)
	if err != nil {
		return "", err
	}
	return data["ciphertext"].(string), nil
}

// Decrypt returns the plaintext of a vault:v<N>: (or fhsm:v<N>:) ciphertext.
func (c *Client) Decrypt(key, ciphertext string, aad []byte) ([]byte, error) {
	body := map[string]interface{}{"ciphertext": ciphertext}
	if aad != nil {
		body["associated_data"] = b64(aad)
	}
	data, err := c.Write("decrypt/"+key, body)
	if err != nil {
		return nil, err
	}
	return base64.StdEncoding.DecodeString(data["plaintext"].(string))
}

// DataKey returns a fresh 256-bit key and its ciphertext under key (envelope encryption).
func (c *Client) DataKey(key string) ([]byte, string, error) {
	data, err := c.Write("datakey/plaintext/"+key, map[string]interface{}{"bits": 256})
	if err != nil {
		return nil, "", err
	}
	plain, err := base64.StdEncoding.DecodeString(data["plaintext"].(string))
	return plain, data["ciphertext"].(string), err
}

func b64(data []byte) string { return base64.StdEncoding.EncodeToString(data) }
