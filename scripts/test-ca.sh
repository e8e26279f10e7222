#!/usr/bin/env bash
# Makes a throw-away certificate authority and a server certificate it signed, for the TLS
# test's broker listener: DIR/{ca.pem,ca.key,server.pem,server.key}. The server certificate
# names DNS:localhost only, so a client that checks host names accepts `localhost` and refuses
# `127.0.0.1`. Also used by the test itself to make a second, unrelated CA.
#
#   scripts/test-ca.sh DIR [NAME]
set -euo pipefail
dir=${1:?usage: test-ca.sh DIR [NAME]}
name=${2:-stega test CA}
mkdir -p "$dir"
cd "$dir"
openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 2 -subj "/CN=$name" \
  -keyout ca.key -out ca.pem -addext "basicConstraints=critical,CA:TRUE" \
  -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -sha256 -subj "/CN=localhost" -keyout server.key -out server.csr 2>/dev/null
printf 'subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n' > server.ext
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -sha256 \
  -extfile server.ext -out server.pem 2>/dev/null
rm -f server.csr server.ext ca.srl
chmod 600 ca.key server.key
