#!/bin/sh
# Starts the Baton service named by the first argument or, with no argument, by BATON_SERVICE; any other
# command runs as given (e.g. `baton dlq replay …`). exec makes the service PID 1, so SIGTERM reaches uvicorn.
set -eu
services="lead_intake scoring routing feedback"
if [ "$#" -eq 0 ]; then
    set -- "${BATON_SERVICE:-}"
    case " $services " in
        *" $1 "*) ;;
        *)
            echo "baton: set BATON_SERVICE (or pass as argument) to one of: $services; got '$1'" >&2
            exit 64
            ;;
    esac
fi
case " $services " in
    *" $1 "*) exec python -m "services.$1" ;;
    *) exec "$@" ;;
esac
