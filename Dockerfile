# streamlearn learner image.
#
# Based on the official Ray CPU image of the Ray the project runs (2.60.0;
# tests/deploy keeps RAY_VERSION, the RayJob's rayVersion and the project's
# Ray equal), so the same image runs the Ray head, the Ray workers and the
# `streamlearn run` driver under KubeRay (which replaces ENTRYPOINT with
# `ray start ...` for the Ray containers), and `streamlearn ...` on its own
# under docker compose.
#
#   docker build -t streamlearn:local .
#   docker run --rm streamlearn:local --help
#
# Two stages: `build` resolves and installs the dependencies and the package
# into a separate prefix (/opt/streamlearn) as the image's non-root `ray` user;
# the final stage copies only that prefix.  pip caches, the source tree and the
# build backend's isolated environment stay in the build stage.
ARG RAY_VERSION=2.60.0

FROM rayproject/ray:${RAY_VERSION}-py311-cpu AS build
ARG RAY_VERSION
# CPU wheels of torch (the default PyPI wheel bundles several GB of CUDA).
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PYTHONUSERBASE=/opt/streamlearn \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
USER 0:0
RUN mkdir -p /opt/streamlearn /src && chown 1000:100 /opt/streamlearn /src
USER 1000:100
WORKDIR /src

# 1) dependencies only: this layer is rebuilt only when pyproject.toml changes.
#    A stub package lets pip resolve the project's dependencies; --user puts
#    what the base image lacks into PYTHONUSERBASE and leaves the image's own
#    ray (constrained to the base image's version) untouched.
COPY --chown=1000:100 pyproject.toml ./
RUN mkdir streamlearn \
 && touch streamlearn/__init__.py \
 && echo "ray==${RAY_VERSION}" > /tmp/constraints.txt \
 && python -m pip install --user --no-cache-dir --no-warn-script-location \
      --extra-index-url "${TORCH_INDEX}" \
      --constraint /tmp/constraints.txt . \
 && python -m pip uninstall --yes streamlearn \
 && rm -rf streamlearn build ./*.egg-info

# 2) the package itself (no dependency resolution, fast to rebuild); then check
#    the installed copy is the one imported (-P: not ./streamlearn).
COPY --chown=1000:100 streamlearn ./streamlearn
RUN python -m pip install --user --no-cache-dir --no-warn-script-location --no-deps . \
 && streamlearn_dir="$(python -P -c 'import streamlearn, os; print(os.path.dirname(streamlearn.__file__))')" \
 && case "$streamlearn_dir" in /opt/streamlearn/*) ;; *) echo "streamlearn not in /opt/streamlearn" >&2; exit 1;; esac


FROM rayproject/ray:${RAY_VERSION}-py311-cpu
LABEL org.opencontainers.image.title="streamlearn" \
      org.opencontainers.image.description="Distributed streaming online learner (Ray + Kafka)"
# RAY_max_direct_call_object_size: every Ray process in the image passes calls of up to 512 KiB inline, as
# a local `streamlearn run` does (streamlearn/actors.py INLINE_BYTES: a sparse model's pushes are ~160 KB).
# NUMBA_CACHE_DIR: the compiled learning loop (streamlearn/linear_kernel.py) caches where the user may write.
ENV PYTHONUSERBASE=/opt/streamlearn \
    PATH=/opt/streamlearn/bin:${PATH} \
    PYTHONUNBUFFERED=1 \
    MPLCONFIGDIR=/tmp/matplotlib \
    NUMBA_CACHE_DIR=/tmp/numba \
    RAY_max_direct_call_object_size=524288
COPY --from=build --chown=0:0 /opt/streamlearn /opt/streamlearn
# The base image gives `ray` passwordless sudo; nothing here needs root, so
# take it away (Kubernetes' allowPrivilegeEscalation=false blocks it too,
# plain `docker run` does not).
USER 0:0
RUN sed -i '/^ray ALL=NOPASSWD: ALL$/d' /etc/sudoers \
 && ! grep -rqsE '^[^#]*NOPASSWD' /etc/sudoers /etc/sudoers.d
# uid 1000 / gid 100 is the base image's `ray` user: it owns the Ray/conda
# installation under /home/ray, so the learner and Ray run unprivileged.
USER 1000:100
WORKDIR /home/ray
EXPOSE 9400
ENTRYPOINT ["streamlearn"]
CMD ["--help"]
