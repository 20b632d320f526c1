"""CuTe DSL sm90 family. ``configs`` is pure data; ``moe_gemm``, ``launch`` and ``timer``
need torch and nvidia-cutlass-dsl (and an sm90 GPU to run)."""
