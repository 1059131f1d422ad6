package main

import (
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"os"
	"strings"
	"testing"
)

// live returns a client for the server in VAULT_ADDR, or skips: CI runs this from
// tests/integration/test_transit_go.py against a live FerroHSM (VAULT_TOKEN a service token,
// TRANSIT_OPERATOR_TOKEN an operator's, TRANSIT_KEY an aes256-gcm96 key, TRANSIT_SIGN_KEY an
// ecdsa-p256 key).
func live(t *testing.T) (*Client, *Client) {
	t.Helper()
	if os.Getenv("VAULT_ADDR") == "" || os.Getenv("TRANSIT_KEY") == "" {
		t.Skip("set VAULT_ADDR, VAULT_TOKEN, VAULT_CACERT, TRANSIT_KEY, TRANSIT_SIGN_KEY and " +
			"TRANSIT_OPERATOR_TOKEN to run against a live server")
	}
	service, err := NewClient()
	if err != nil {
		t.Fatal(err)
	}
	operator := *service
	operator.Token = os.Getenv("TRANSIT_OPERATOR_TOKEN")
	return service, &operator
}

func status(err error) int {
	var vaultErr *VaultError
	if errors.As(err, &vaultErr) {
		return vaultErr.Status
	}
	return 0
}

func TestTransitLive(t *testing.T) {
	c, operator := live(t)
	key, signKey := os.Getenv("TRANSIT_KEY"), os.Getenv("TRANSIT_SIGN_KEY")

	listed, err := c.Do("LIST", "keys", nil)
	if err != nil || !strings.Contains(strings.Join(toStrings(listed["keys"]), ","), key) {
		t.Fatalf("LIST keys: %v %v", listed, err)
	}
	info, err := c.Do("GET", "keys/"+key, nil)
	if err != nil || info["type"] != "aes256-gcm96" || info["exportable"] != false {
		t.Fatalf("read key: %v %v", info, err)
	}

	aad := []byte("tenant-7")
	ct, err := c.Encrypt(key, []byte("secret"), aad)
	if err != nil || !strings.HasPrefix(ct, "vault:v1:") {
		t.Fatalf("encrypt: %q %v", ct, err)
	}
	if plain, err := c.Decrypt(key, ct, aad); err != nil || string(plain) != "secret" {
		t.Fatalf("decrypt: %q %v", plain, err)
	}
	if _, err := c.Decrypt(key, ct, []byte("tenant-8")); status(err) != 400 {
		t.Fatalf("decrypt with other associated data: want 400, got %v", err)
	}

	batch, err := c.Write("encrypt/"+key, map[string]interface{}{"batch_input": []interface{}{
		map[string]interface{}{"plaintext": b64([]byte("a"))},
		map[string]interface{}{"plaintext": b64([]byte("b"))}}})
	results, _ := batch["batch_results"].([]interface{})
	if err != nil || len(results) != 2 {
		t.Fatalf("batch encrypt: %v %v", batch, err)
	}

	if _, err := c.Write("keys/"+key+"/rotate", nil); status(err) != 403 {
		t.Fatalf("a service token may not rotate: want 403, got %v", err)
	}
	rotated, err := operator.Write("keys/"+key+"/rotate", nil)
	if err != nil || rotated["latest_version"].(float64) < 2 {
		t.Fatalf("rotate: %v %v", rotated, err)
	}
	if plain, err := c.Decrypt(key, ct, aad); err != nil || string(plain) != "secret" {
		t.Fatalf("decrypt after rotation: %q %v", plain, err)
	}
	rewrapped, err := c.Write("rewrap/"+key, map[string]interface{}{"ciphertext": ct,
		"associated_data": b64(aad)})
	if err != nil || strings.HasPrefix(rewrapped["ciphertext"].(string), "vault:v1:") {
		t.Fatalf("rewrap: %v %v", rewrapped, err)
	}

	env, err := Seal(c, key, []byte("envelope payload"))
	if err != nil {
		t.Fatal(err)
	}
	if data, err := Open(c, env); err != nil || string(data) != "envelope payload" {
		t.Fatalf("envelope: %q %v", data, err)
	}

	signLive(t, c, signKey)

	if _, err := c.Encrypt("no-such-key-anywhere", []byte("x"), nil); status(err) != 404 {
		t.Fatalf("unknown key: want 404, got %v", err)
	}
	_, err = c.Write("hmac/"+key, map[string]interface{}{"input": b64([]byte("x"))})
	if status(err) != 400 || !strings.Contains(err.Error(), "not supported by FerroHSM") {
		t.Fatalf("hmac: want a clear 400, got %v", err)
	}
}

// signLive signs through the transit API and verifies both there and locally (crypto/ecdsa)
// with the public key from the key's info.
func signLive(t *testing.T, c *Client, key string) {
	t.Helper()
	message := []byte("release 1.2.3")
	signed, err := c.Write("sign/"+key+"/sha2-256", map[string]interface{}{"input": b64(message)})
	if err != nil {
		t.Fatal(err)
	}
	signature := signed["signature"].(string)
	verified, err := c.Write("verify/"+key, map[string]interface{}{"input": b64(message),
		"signature": signature, "hash_algorithm": "sha2-256"})
	if err != nil || verified["valid"] != true {
		t.Fatalf("verify: %v %v", verified, err)
	}
	info, err := c.Do("GET", "keys/"+key, nil)
	if err != nil {
		t.Fatal(err)
	}
	version := info["keys"].(map[string]interface{})["1"].(map[string]interface{})
	block, _ := pem.Decode([]byte(version["public_key"].(string)))
	public, err := x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	der, err := base64.StdEncoding.DecodeString(strings.SplitN(signature, ":", 3)[2])
	digest := sha256.Sum256(message)
	if err != nil || !ecdsa.VerifyASN1(public.(*ecdsa.PublicKey), digest[:], der) {
		t.Fatalf("local verification failed: %v", err)
	}
}

func toStrings(value interface{}) []string {
	items, _ := value.([]interface{})
	out := make([]string, 0, len(items))
	for _, item := range items {
		s, _ := item.(string)
		out = append(out, s)
	}
	return out
}
