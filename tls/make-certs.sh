#!/bin/sh
# Makes the certificates the tests and the demo use, in this folder:
#   ca.pem                        a certificate authority (its key: ca-key.pem)
#   server.pem, server-key.pem    the server: localhost, 127.0.0.1, 127.0.0.2, and HOST if given
#   client.pem, client-key.pem    a client the authority vouches for
#   stranger.pem, stranger-key.pem  a client no one vouches for (self-signed), to be refused
#
#   sh tls/make-certs.sh               # for one machine
#   sh tls/make-certs.sh 192.168.1.20  # also valid for the server at that address (two machines)
#
# These keys are for tests and the demo only: they are public, in the repository.
# Needs openssl (Linux, macOS). RSA 2048 and X.509 v3, which every runtime's TLS accepts.
set -eu
cd "$(dirname "$0")"
host=${1:-}
days=36500 # a hundred years: test material must not expire under a student's feet
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# A key and a signing request: make_request NAME "SUBJECT"
make_request() {
  openssl req -new -newkey rsa:2048 -nodes -keyout "$1-key.pem" -subj "$2" -out "$tmp/$1.csr" 2>/dev/null
}

make_request ca "/CN=rpc.ts test authority"
printf 'basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\nsubjectKeyIdentifier=hash\n' >"$tmp/ca.ext"
openssl x509 -req -in "$tmp/ca.csr" -signkey ca-key.pem -days $days -extfile "$tmp/ca.ext" -out ca.pem 2>/dev/null

names="DNS:localhost,IP:127.0.0.1,IP:127.0.0.2"
case "$host" in
"") ;;
*[!0-9.]*) names="$names,DNS:$host" ;;
*) names="$names,IP:$host" ;;
esac
make_request server "/CN=${host:-localhost}"
printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n' "$names" >"$tmp/server.ext"
openssl x509 -req -in "$tmp/server.csr" -CA ca.pem -CAkey ca-key.pem -CAcreateserial -CAserial "$tmp/serial" \
  -days $days -extfile "$tmp/server.ext" -out server.pem 2>/dev/null

printf 'extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n' >"$tmp/client.ext"
make_request client "/CN=rpc.ts test client"
openssl x509 -req -in "$tmp/client.csr" -CA ca.pem -CAkey ca-key.pem -CAcreateserial -CAserial "$tmp/serial" \
  -days $days -extfile "$tmp/client.ext" -out client.pem 2>/dev/null

make_request stranger "/CN=a stranger"
openssl x509 -req -in "$tmp/stranger.csr" -signkey stranger-key.pem -days $days -extfile "$tmp/client.ext" \
  -out stranger.pem 2>/dev/null

echo "Made ca.pem, server.pem, client.pem and stranger.pem (with their keys) in $(pwd); server names: $names"
