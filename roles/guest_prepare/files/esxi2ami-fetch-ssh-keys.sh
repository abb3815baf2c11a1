#!/bin/sh
# esxi2ami-fetch-ssh-keys: put the EC2 instance's SSH public keys (IMDSv2 only) into a marked block
# of the login user's authorized_keys. Installed by the esxi2ami.migrate guest_prepare role.
#
# Configuration: /etc/esxi2ami/ssh-keys.conf (KEY=VALUE lines, not sourced), or the file named by
# $ESXI2AMI_SSH_KEYS_CONF; environment variables ESXI2AMI_<KEY> override it. Keys:
#   IMDS_ENDPOINT    http://169.254.169.254 (IPv6: http://[fd00:ec2::254])
#   LOGIN_USER       user whose authorized_keys receive the keys (required)
#   AUTHORIZED_KEYS  file to write (default: ~LOGIN_USER/.ssh/authorized_keys)
#   TOKEN_TTL        IMDSv2 token lifetime in seconds (default 300)
#   TIMEOUT          seconds per HTTP request (default 5)
#   BOOT_RETRIES     with --boot: attempts to get a token while the network comes up (default 24)
#   BOOT_DELAY       with --boot: seconds between those attempts (default 5)
# ESXI2AMI_HTTP_CLIENT=curl|wget forces the HTTP client (default: curl when installed, else wget).
# Exit: 0 keys in place (changed or not), 1 IMDS unreachable or answered garbage (nothing changed),
#       2 configuration error (nothing changed).
set -u
umask 077
PATH=${PATH:+$PATH:}/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
TAG=esxi2ami-ssh-keys
BEGIN_MARK='# BEGIN esxi2ami imds keys'
END_MARK='# END esxi2ami imds keys'
KEY_RE='^(ssh-ed25519|ecdsa-sha2-nistp256|ecdsa-sha2-nistp384|ecdsa-sha2-nistp521|ssh-rsa|sk-ssh-ed25519@openssh\.com|sk-ecdsa-sha2-nistp256@openssh\.com) [A-Za-z0-9+/]+={0,2}( [ -~]*)?$'

log() {
    if command -v logger >/dev/null 2>&1; then
        logger -t "$TAG" -- "$*" 2>/dev/null || :
    fi
    printf '%s: %s\n' "$TAG" "$*" >&2
}

die() { # code message
    code=$1
    shift
    log "$* (authorized_keys left unchanged)"
    exit "$code"
}

# ------------------------------------------------------------------------------------------ config
IMDS_ENDPOINT=http://169.254.169.254
LOGIN_USER=
AUTHORIZED_KEYS=
TOKEN_TTL=300
TIMEOUT=5
BOOT_RETRIES=24
BOOT_DELAY=5
CONF=${ESXI2AMI_SSH_KEYS_CONF:-/etc/esxi2ami/ssh-keys.conf}
if [ -r "$CONF" ]; then
    while IFS= read -r line || [ -n "$line" ]; do
        case $line in '' | '#'*) continue ;; esac
        key=${line%%=*}
        value=${line#*=}
        case $key in
            IMDS_ENDPOINT) IMDS_ENDPOINT=$value ;;
            LOGIN_USER) LOGIN_USER=$value ;;
            AUTHORIZED_KEYS) AUTHORIZED_KEYS=$value ;;
            TOKEN_TTL) TOKEN_TTL=$value ;;
            TIMEOUT) TIMEOUT=$value ;;
            BOOT_RETRIES) BOOT_RETRIES=$value ;;
            BOOT_DELAY) BOOT_DELAY=$value ;;
            *) log "ignoring unknown setting '$key' in $CONF" ;;
        esac
    done <"$CONF"
fi
IMDS_ENDPOINT=${ESXI2AMI_IMDS_ENDPOINT:-$IMDS_ENDPOINT}
LOGIN_USER=${ESXI2AMI_LOGIN_USER:-$LOGIN_USER}
AUTHORIZED_KEYS=${ESXI2AMI_AUTHORIZED_KEYS:-$AUTHORIZED_KEYS}
TOKEN_TTL=${ESXI2AMI_TOKEN_TTL:-$TOKEN_TTL}
TIMEOUT=${ESXI2AMI_TIMEOUT:-$TIMEOUT}
BOOT_RETRIES=${ESXI2AMI_BOOT_RETRIES:-$BOOT_RETRIES}
BOOT_DELAY=${ESXI2AMI_BOOT_DELAY:-$BOOT_DELAY}
IMDS_ENDPOINT=${IMDS_ENDPOINT%/}

BOOT=
for arg in "$@"; do
    case $arg in
        --boot) BOOT=1 ;;
        -h | --help)
            sed -n '2,17p' "$0"
            exit 0
            ;;
        *) die 2 "unknown argument '$arg' (use --boot or --help)" ;;
    esac
done

is_uint() { case $1 in '' | *[!0-9]*) return 1 ;; *) return 0 ;; esac }
for n in "$TOKEN_TTL" "$TIMEOUT" "$BOOT_RETRIES" "$BOOT_DELAY"; do
    is_uint "$n" || die 2 "TOKEN_TTL, TIMEOUT, BOOT_RETRIES and BOOT_DELAY must be whole numbers (got '$n')"
done
case $IMDS_ENDPOINT in
    http://*/* | https://*/*) die 2 "IMDS_ENDPOINT must be scheme://host[:port] without a path (got '$IMDS_ENDPOINT')" ;;
    http://?* | https://?*) ;;
    *) die 2 "IMDS_ENDPOINT must look like http://169.254.169.254 or http://[fd00:ec2::254] (got '$IMDS_ENDPOINT')" ;;
esac
[ -n "$LOGIN_USER" ] || die 2 "LOGIN_USER is not set in $CONF"
PASSWD=$(getent passwd "$LOGIN_USER") || die 2 "login user '$LOGIN_USER' does not exist"
USER_HOME=$(printf '%s\n' "$PASSWD" | cut -d: -f6)
USER_UID=$(printf '%s\n' "$PASSWD" | cut -d: -f3)
USER_GID=$(printf '%s\n' "$PASSWD" | cut -d: -f4)
[ -n "$AUTHORIZED_KEYS" ] || AUTHORIZED_KEYS=$USER_HOME/.ssh/authorized_keys
SSH_DIR=$(dirname "$AUTHORIZED_KEYS")

CLIENT=${ESXI2AMI_HTTP_CLIENT:-}
case $CLIENT in curl | wget | '') ;; *) die 2 "ESXI2AMI_HTTP_CLIENT must be curl or wget (got '$CLIENT')" ;; esac
if [ -n "$CLIENT" ]; then
    command -v "$CLIENT" >/dev/null 2>&1 || die 2 "$CLIENT is not installed"
elif command -v curl >/dev/null 2>&1; then
    CLIENT=curl
elif command -v wget >/dev/null 2>&1; then
    CLIENT=wget
else
    die 2 "neither curl nor wget is installed"
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/esxi2ami-keys.XXXXXX") || die 2 "cannot create a temporary directory"
trap 'rm -rf "$WORK"' EXIT
trap 'exit 1' HUP INT TERM

# http METHOD PATH OUTFILE HEADER -> prints the HTTP status (000: no answer). Never follows redirects,
# never uses a proxy: the metadata service is link-local.
http() {
    if [ "$CLIENT" = curl ]; then
        status=$(curl -s --noproxy '*' --connect-timeout "$TIMEOUT" --max-time "$TIMEOUT" -X "$1" \
            -H "$4" -o "$3" -w '%{http_code}' "$IMDS_ENDPOINT$2" 2>/dev/null) || status=000
    else
        wget -q -S --no-proxy -t 1 -T "$TIMEOUT" --max-redirect=0 --method="$1" --header="$4" \
            -O "$3" "$IMDS_ENDPOINT$2" 2>"$WORK/headers" || :
        status=$(sed -n 's/^ *HTTP\/[0-9.]* \([0-9][0-9][0-9]\).*/\1/p' "$WORK/headers" | tail -n 1)
    fi
    case $status in [0-9][0-9][0-9]) ;; *) status=000 ;; esac
    printf '%s' "$status"
}

get_token() {
    : >"$WORK/token"
    code=$(http PUT /latest/api/token "$WORK/token" "X-aws-ec2-metadata-token-ttl-seconds: $TOKEN_TTL")
    [ "$code" = 200 ] || return 1
    TOKEN=$(cat "$WORK/token")
    # A token is one line of base64-ish characters; anything else (HTML, JSON) is not IMDSv2.
    case $TOKEN in '' | *[!A-Za-z0-9+/=_-]*) return 2 ;; esac
    [ "${#TOKEN}" -le 512 ] || return 2
    return 0
}

attempt=1
while :; do
    get_token
    rc=$?
    [ $rc = 0 ] && break
    [ $rc = 2 ] && die 1 "IMDS at $IMDS_ENDPOINT answered the token request with something that is not a token"
    if [ -n "$BOOT" ] && [ "$attempt" -lt "$BOOT_RETRIES" ]; then
        attempt=$((attempt + 1))
        sleep "$BOOT_DELAY"
        continue
    fi
    die 1 "no IMDSv2 token from $IMDS_ENDPOINT (HTTP $code); IMDSv1 is never used"
done
AUTH="X-aws-ec2-metadata-token: $TOKEN"

# ------------------------------------------------------------------------------------------ keys
: >"$WORK/keys"
code=$(http GET /latest/meta-data/public-keys/ "$WORK/index" "$AUTH")
case $code in
    200)
        [ -s "$WORK/index" ] || die 1 "IMDS listed no public keys in an empty answer"
        # lines are "N=key-name"; anything else is garbage
        if grep -qvE '^[0-9]+=[^[:cntrl:]]*$' "$WORK/index"; then
            die 1 "IMDS public-keys/ answer is not a key list"
        fi
        cut -d= -f1 "$WORK/index" >"$WORK/indexes"
        while IFS= read -r index; do
            code=$(http GET "/latest/meta-data/public-keys/$index/openssh-key" "$WORK/key" "$AUTH")
            [ "$code" = 200 ] || die 1 "IMDS answered HTTP $code for public key $index"
            tr -d '\r' <"$WORK/key" | sed -e '/^[[:space:]]*$/d' >"$WORK/key.lines"
            [ -s "$WORK/key.lines" ] || die 1 "IMDS public key $index is empty"
            if grep -qvE "$KEY_RE" "$WORK/key.lines"; then
                die 1 "IMDS public key $index is not a well-formed OpenSSH public key of a current type"
            fi
            while IFS= read -r keyline; do
                body=$(printf '%s\n' "$keyline" | cut -d' ' -f2)
                if [ $((${#body} % 4)) != 0 ] || [ "${#body}" -lt 64 ]; then
                    die 1 "IMDS public key $index has a malformed base64 body"
                fi
            done <"$WORK/key.lines"
            cat "$WORK/key.lines" >>"$WORK/keys"
        done <"$WORK/indexes"
        ;;
    404) log "the instance has no public keys (IMDS answered 404 for public-keys/)" ;;
    *) die 1 "IMDS answered HTTP $code for public-keys/" ;;
esac
count=$(sort -u "$WORK/keys" | grep -c . || :)

# ------------------------------------------------------------------------------------------ write
[ -L "$SSH_DIR" ] && die 2 "$SSH_DIR is a symbolic link: refusing to write through it"
[ -L "$AUTHORIZED_KEYS" ] && die 2 "$AUTHORIZED_KEYS is a symbolic link: refusing to replace it"
current=$WORK/current
if [ -f "$AUTHORIZED_KEYS" ]; then
    cat "$AUTHORIZED_KEYS" >"$current" || die 2 "cannot read $AUTHORIZED_KEYS"
else
    : >"$current"
fi
# keep every line outside our block (an unterminated block is kept as it is)
awk -v b="$BEGIN_MARK" -v e="$END_MARK" '
    $0 == b { inblock = 1; n = 0; held[n++] = $0; next }
    inblock && $0 == e { inblock = 0; next }
    inblock { held[n++] = $0; next }
    { print }
    END { if (inblock) for (i = 0; i < n; i++) print held[i] }
' "$current" >"$WORK/new" || die 2 "cannot parse $AUTHORIZED_KEYS"
if [ "$count" -gt 0 ]; then
    {
        printf '%s\n' "$BEGIN_MARK"
        awk '!seen[$0]++' "$WORK/keys"
        printf '%s\n' "$END_MARK"
    } >>"$WORK/new"
fi

if [ ! -f "$AUTHORIZED_KEYS" ] && [ "$count" -eq 0 ]; then
    log "no keys to install and no $AUTHORIZED_KEYS: nothing to do"
    exit 0
fi
if [ ! -d "$SSH_DIR" ]; then
    mkdir -p "$SSH_DIR" || die 2 "cannot create $SSH_DIR"
    chown "$USER_UID:$USER_GID" "$SSH_DIR" || die 2 "cannot chown $SSH_DIR"
fi
chmod 0700 "$SSH_DIR" || die 2 "cannot chmod $SSH_DIR"
if [ -f "$AUTHORIZED_KEYS" ] && cmp -s "$WORK/new" "$AUTHORIZED_KEYS"; then
    chmod 0600 "$AUTHORIZED_KEYS"
    log "$count key(s) from IMDS already in $AUTHORIZED_KEYS"
    exit 0
fi
tmp=$(mktemp "$SSH_DIR/.authorized_keys.XXXXXX") || die 2 "cannot create a temporary file in $SSH_DIR"
if ! { cat "$WORK/new" >"$tmp" && chmod 0600 "$tmp" && chown "$USER_UID:$USER_GID" "$tmp" &&
    mv -f "$tmp" "$AUTHORIZED_KEYS"; }; then
    rm -f "$tmp"
    die 2 "cannot write $AUTHORIZED_KEYS"
fi
if command -v restorecon >/dev/null 2>&1; then
    restorecon -R "$SSH_DIR" >/dev/null 2>&1 || :
fi
log "$count key(s) from IMDS written to $AUTHORIZED_KEYS"
exit 0
