"""Type stub for the compiled verifier (sources: ext/_verify.pyx); same contract as engine.verify.PyVerifier."""

from typing import ClassVar

from engine.codes.trust import TrustTable
from engine.verify.contract import BatchResult, CodeBatch

def ed25519_verify(signature: bytes, message: bytes, public_key: bytes) -> bool: ...
def verify_loop(signature: bytes, message: bytes, public_key: bytes, iterations: int) -> int: ...

class CVerifier:
    implementation: ClassVar[str]
    threads: int
    skew: int
    def __init__(
        self,
        trust: TrustTable,
        person_secret: bytes,
        *,
        cache_size: int = 65536,
        threads: int = 1,
        skew: int = 300,
    ) -> None: ...
    def set_trust(self, trust: TrustTable) -> None: ...
    def verify_batch(self, batch: CodeBatch, now: int) -> BatchResult: ...
    @property
    def cache_hits(self) -> int: ...
    @property
    def cache_lookups(self) -> int: ...
