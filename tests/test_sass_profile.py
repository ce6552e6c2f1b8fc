"""scripts/sass_profile.py: reading a time loop's instructions out of nvdisasm's SASS (the
compiling itself needs Triton's NVIDIA tools and runs by hand: its docstring)."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "scripts"))
import sass_profile  # noqa: E402

# nvdisasm -c's shape: a time loop (.L_x_1) holding a loop over K (.L_x_2, arithmetic) and
# a barrier's spin (.L_x_3, none), and a loop after it (.L_x_5)
SASS = """
        /*0000*/                   MOV R1, c[0x0][0x28] ;
.L_x_1:
        /*0010*/                   LDG.E R2, desc[UR4][R4.64] ;
        /*0020*/                   SHFL.BFLY PT, R3, R2, 0x1, 0x1f ;
.L_x_2:
        /*0030*/                   FFMA R5, R2, R3, R5 ;
        /*0040*/                   FFMA R6, R2, R3, R6 ;
        /*0050*/               @P0 BRA `(.L_x_2) ;
.L_x_3:
        /*0060*/                   LDG.E.STRONG.GPU R7, desc[UR4][R8.64] ;
        /*0070*/                   CCTL.IVALL ;
        /*0080*/              @!P1 BRA `(.L_x_3) ;
        /*0090*/                   STG.E desc[UR4][R10.64], R5 ;
        /*00a0*/              @!P2 BRA `(.L_x_1) ;
.L_x_4:
        /*00b0*/                   EXIT ;
.L_x_5:
        /*00c0*/                   BRA `(.L_x_5) ;
"""


def test_loops_are_the_branches_back():
    found = {(start, end): dict(body) for start, end, body in sass_profile.loops(SASS)}
    assert found == {
        (0x30, 0x50): {"FFMA": 2, "BRA": 1},
        (0x60, 0x80): {"LDG": 1, "CCTL": 1, "BRA": 1},
        (0x10, 0xa0): {"LDG": 2, "SHFL": 1, "FFMA": 2, "BRA": 3, "CCTL": 1, "STG": 1},
        (0xc0, 0xc0): {"BRA": 1},
    }


def test_a_step_counts_each_chunk_of_k_and_no_wait():
    """H=256 in chunks of 64: the loop over K's body four times a step, the spin not at
    all."""
    counts, waits = sass_profile.step(SASS, 256, 64)
    assert dict(counts) == {"LDG": 1, "SHFL": 1, "FFMA": 8, "BRA": 5, "STG": 1}
    assert waits == ["a wait of 3 instructions"]
    counts, _ = sass_profile.step(SASS, 64, 64)  # (one chunk: the body once)
    assert counts["FFMA"] == 2 and counts["BRA"] == 2
