"""A cache hint for jitted loops: start loading an array element a few packets before it is
needed, so the misses of tables far larger than L2 (65,536 tenants' meters, counters, ports)
overlap instead of queueing."""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic


@intrinsic
def prefetch_row(typingctx, array, r):
    """Bring row r of a 2-D array (element r of a 1-D one) towards the cache, for writing
    (LLVM's llvm.prefetch: a hint that never faults, whatever r is)."""

    def codegen(context, builder, signature, args):
        array_type, r_type = signature.args
        made = context.make_array(array_type)(context, builder, args[0])
        index = [context.cast(builder, args[1], r_type, types.intp)]
        index += [context.get_constant(types.intp, 0)] * (array_type.ndim - 1)
        ptr = cgutils.get_item_pointer(context, builder, array_type, made, index, wraparound=False)
        i8p, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]),
                                            "llvm.prefetch.p0i8")  # fmt: skip
        builder.call(fn, [builder.bitcast(ptr, i8p), i32(1), i32(3), i32(1)])  # write, keep, data
        return context.get_dummy_value()

    return types.void(array, r), codegen
