#!/bin/sh
cd /work/wt-pages && DATABASE_URL=postgres://postgres@127.0.0.1:5432/tb_pages REDIS_URL=redis://127.0.0.1:6379/4 REQUIRE_POSTGRES=1 DB_POOL_MAX_SIZE=48 LEDGER_THREADS=8 .venv/bin/python -m pytest "$@"
