#!/bin/sh
# One-shot (temporalio/admin-tools), once the server answers: our namespace and the custom search attributes of
# temporal-config/search-attributes.json. Idempotent.
set -eu
NAMESPACE="${TEMPORAL_NAMESPACE:-default}"
RETENTION="${TEMPORAL_RETENTION:-168h}"
ATTRIBUTES=/etc/prognet/temporal-config/search-attributes.json

tries=0
until temporal operator cluster health >/dev/null 2>&1; do
  tries=$((tries + 1))
  [ "$tries" -lt 60 ] || { echo "Temporal at $TEMPORAL_ADDRESS is not healthy" >&2; exit 1; }
  sleep 2
done

if temporal operator namespace describe --namespace "$NAMESPACE" >/dev/null 2>&1; then
  echo "namespace $NAMESPACE exists"
else
  temporal operator namespace create --namespace "$NAMESPACE" --retention "$RETENTION"
fi

# one `"Name": "Type"` pair per line in the JSON file (the file keeps that shape; no jq in the image)
sed -n 's/^ *"\([A-Za-z0-9_]*\)" *: *"\([A-Za-z]*\)".*/\1 \2/p' "$ATTRIBUTES" | while read -r name type; do
  if temporal operator search-attribute list --namespace "$NAMESPACE" | grep -qw "$name"; then
    echo "search attribute $name exists"
  else
    temporal operator search-attribute create --namespace "$NAMESPACE" --name "$name" --type "$type"
  fi
done
echo "namespace $NAMESPACE is ready"
