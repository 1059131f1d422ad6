// transit-envelope encrypts a file with a data key from a Vault-compatible transit API
// (FerroHSM's /v1/transit/, or Vault itself), and decrypts it again. Only the data key's
// ciphertext is stored beside the data: decrypting it needs the server and a token it accepts.
//
// Usage: VAULT_ADDR=… VAULT_TOKEN=… VAULT_CACERT=… go run . -key NAME [-decrypt] FILE
package main

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"strings"
)

// Envelope is what FILE.enc holds: the wrapped data key, the nonce and the sealed bytes.
type Envelope struct {
	Key        string `json:"key"`
	WrappedKey string `json:"wrapped_key"`
	Nonce      []byte `json:"nonce"`
	Sealed     []byte `json:"sealed"`
}

// Seal encrypts data under a fresh data key of the transit key named key.
func Seal(c *Client, key string, data []byte) (*Envelope, error) {
	plainKey, wrapped, err := c.DataKey(key)
	if err != nil {
		return nil, err
	}
	aead, err := gcm(plainKey)
	if err != nil {
		return nil, err
	}
	nonce := make([]byte, aead.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	return &Envelope{Key: key, WrappedKey: wrapped, Nonce: nonce,
		Sealed: aead.Seal(nil, nonce, data, []byte(key))}, nil
}

// Open asks the server to decrypt the data key, then opens the data locally.
func Open(c *Client, env *Envelope) ([]byte, error) {
	plainKey, err := c.Decrypt(env.Key, env.WrappedKey, nil)
	if err != nil {
		return nil, err
	}
	aead, err := gcm(plainKey)
	if err != nil {
		return nil, err
	}
	return aead.Open(nil, env.Nonce, env.Sealed, []byte(env.Key))
}

func gcm(key []byte) (cipher.AEAD, error) {
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}

func run() error {
	key := flag.String("key", "", "transit key name")
	decrypt := flag.Bool("decrypt", false, "decrypt FILE.enc instead of encrypting FILE")
	flag.Parse()
	if *key == "" || flag.NArg() != 1 {
		return fmt.Errorf("usage: go run . -key NAME [-decrypt] FILE")
	}
	c, err := NewClient()
	if err != nil {
		return err
	}
	path := flag.Arg(0)
	if *decrypt {
		var env Envelope
		raw, err := os.ReadFile(path)
		if err == nil {
			err = json.Unmarshal(raw, &env)
		}
		if err != nil {
			return err
		}
		data, err := Open(c, &env)
		if err != nil {
			return err
		}
		return os.WriteFile(strings.TrimSuffix(path, ".enc"), data, 0o600)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	env, err := Seal(c, *key, data)
	if err != nil {
		return err
	}
	out, _ := json.Marshal(env)
	return os.WriteFile(path+".enc", out, 0o600)
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
}
