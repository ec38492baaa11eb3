# fig_add_instance(<target> <source> <output name> <gencode flag>)
# One instance = one shared library: hidden visibility (only the FIG_EXPORT C entry points are
# visible), static cudart so the library runs under any torch, the flags generator/render.py
# hashes into the output name.
set(FIG_TEMPLATE_DIR ${CMAKE_CURRENT_LIST_DIR}/../templates)

function(fig_add_instance target source output_name gencode)
  add_library(${target} SHARED ${source})
  set_target_properties(${target} PROPERTIES
    CUDA_ARCHITECTURES OFF
    CUDA_RUNTIME_LIBRARY Static
    CUDA_VISIBILITY_PRESET hidden
    CXX_VISIBILITY_PRESET hidden
    POSITION_INDEPENDENT_CODE ON
    PREFIX "lib"
    OUTPUT_NAME ${output_name}
    LIBRARY_OUTPUT_DIRECTORY ${FIG_LIBRARY_DIR})
  target_include_directories(${target} PRIVATE ${FIG_TEMPLATE_DIR} ${FIG_CUTLASS_INCLUDE})
  separate_arguments(gencode_list UNIX_COMMAND "${gencode}")
  target_compile_options(${target} PRIVATE
    $<$<COMPILE_LANGUAGE:CUDA>:-std=c++17 -O3 --expt-relaxed-constexpr ${gencode_list}>)
  target_link_options(${target} PRIVATE -Wl,--exclude-libs,ALL)
endfunction()
